"""ensemble: blend every backbone's fold predictions; score the out-of-fold blend.

    python -m pipeline ensemble            # reads train.backbones, base.folds, competition.metric

OOF: each training row is predicted by the one fold model that never saw it; backbones are
averaged. Test: the mean over every fold and backbone. Multi-label: per-class decision thresholds
are tuned on the OOF blend to maximise competition.metric (never worse than 0.5 there). Writes
ensemble/{oof,test}.csv, ensemble/thresholds.json ({metric, thresholds: {class: t} or null}) and
metrics/cv.json (`dvc metrics show` prints it): the metric, its CV value, every applicable
metric, the value per backbone and, for multi-label, every metric at threshold 0.5; and
metrics/confusion.csv (actual, predicted), the OOF confusion matrix of `dvc plots show`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from pipeline import metrics
from pipeline.files import PipelineError, atomic_dir, write_csv, write_json
from pipeline.index import encode_labels, read_index
from pipeline.params import load_params


def read_preds(path: Path, classes: list[str]) -> pd.DataFrame:
    if not path.exists():
        raise PipelineError(f"{path}: missing; run `dvc repro predict` first")
    frame = pd.read_csv(path, dtype={"id": str}, keep_default_na=False).set_index("id")
    return frame[classes]


def blend(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Row-aligned mean of probability frames that share ids (in any order)."""
    ids = frames[0].index
    return sum(f.loc[ids] for f in frames) / len(frames)


def run(
    backbones: list[str],
    folds: list[int],
    metric: str,
    preds: Path = Path("preds"),
    out: Path = Path("ensemble"),
    out_metrics: Path = Path("metrics/cv.json"),
    out_confusion: Path = Path("metrics/confusion.csv"),
) -> dict:
    index = read_index()
    classes = index.classes
    oof_per_model = []
    for name in backbones:
        oof = pd.concat([read_preds(preds / name / f"fold{k}" / "oof.csv", classes) for k in folds])
        if oof.index.duplicated().any() or set(oof.index) != set(index.train["id"]):
            raise PipelineError(
                f"{preds / name}: OOF predictions do not cover each training id once"
            )
        oof_per_model.append(oof)
    tests = [
        read_preds(preds / n / f"fold{k}" / "test.csv", classes) for n in backbones for k in folds
    ]
    oof, test = blend(oof_per_model).loc[index.train["id"]], blend(tests).loc[index.test["id"]]
    task = index.meta["task"]
    targets = encode_labels(index.train["label"], classes, task)
    metrics.check_applies(metric, task)
    # multi-label: per-class thresholds tuned on the OOF blend for the competition metric
    oof_np = oof.to_numpy()
    thresholds = metrics.tune_thresholds(metric, oof_np, targets)
    report = metrics.report(oof_np, targets, thresholds)
    per_model = {
        n: metrics.value(metric, o.loc[index.train["id"]].to_numpy(), targets, thresholds)
        for n, o in zip(backbones, oof_per_model, strict=True)
    }
    cv = {"metric": metric, "cv": report[metric], **report, "per_backbone": per_model}
    decision = {"metric": metric, "thresholds": None}
    if task == "multi_label":
        cv["at_threshold_0.5"] = metrics.report(oof_np, targets, 0.5)
        decision["thresholds"] = {c: float(t) for c, t in zip(classes, thresholds, strict=True)}
    with atomic_dir(out) as tmp:  # the three files appear together or not at all
        write_csv(tmp / "oof.csv", oof.reset_index())
        write_csv(tmp / "test.csv", test.reset_index())
        write_json(tmp / "thresholds.json", decision)
    write_json(out_metrics, cv)
    confusion = metrics.confusion_pairs(oof_np, targets, classes, metric, thresholds)
    write_csv(out_confusion, confusion)
    print(
        f"ensemble: {len(backbones)} backbone(s) x {len(folds)} folds, CV {metric} "
        f"{report[metric]:.4f} ({', '.join(f'{k} {v:.4f}' for k, v in report.items())})"
    )
    return cv


def main(argv: list[str]) -> None:
    argparse.ArgumentParser(prog="python -m pipeline ensemble").parse_args(argv)
    p = load_params()
    run(p.train.backbones, p.base.folds, p.competition.metric)

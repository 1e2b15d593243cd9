"""ensemble: blend every backbone's fold predictions; score the out-of-fold blend.

    python -m pipeline ensemble            # reads train.backbones, base.folds, competition.metric

OOF: each training row is predicted by the one fold model that never saw it; backbones are
averaged. Test: the mean over every fold and backbone. Writes ensemble/{oof,test}.csv and
metrics/cv.json (`dvc metrics show` prints it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from pipeline import metrics
from pipeline.data import read_index
from pipeline.files import PipelineError, write_csv, write_json
from pipeline.params import load_params


def read_preds(path: Path, classes: list[str]) -> pd.DataFrame:
    if not path.exists():
        raise PipelineError(f"{path}: missing; run `dvc repro predict` first")
    frame = pd.read_csv(path, dtype={"id": str}).set_index("id")
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
    lookup = {c: i for i, c in enumerate(classes)}
    targets = index.train["label"].map(lookup).to_numpy()
    report = metrics.report(oof.to_numpy(), targets)
    per_model = {
        n: metrics.report(o.loc[index.train["id"]].to_numpy(), targets)[metric]
        for n, o in zip(backbones, oof_per_model, strict=True)
    }
    cv = {"metric": metric, "cv": report[metric], **report, "per_backbone": per_model}
    write_csv(out / "oof.csv", oof.reset_index())
    write_csv(out / "test.csv", test.reset_index())
    write_json(out_metrics, cv)
    print(
        f"ensemble: {len(backbones)} backbone(s) x {len(folds)} folds, CV {metric} "
        f"{report[metric]:.4f} ({', '.join(f'{k} {v:.4f}' for k, v in report.items())})"
    )
    return cv


def main(argv: list[str]) -> None:
    argparse.ArgumentParser(prog="python -m pipeline ensemble").parse_args(argv)
    p = load_params()
    run(p.train.backbones, p.base.folds, p.competition.metric)

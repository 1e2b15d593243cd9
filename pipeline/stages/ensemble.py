"""ensemble: blend every model's fold predictions; score the out-of-fold blend.

    python -m pipeline ensemble            # the teachers: reads train.backbones, base.folds, metric
    python -m pipeline ensemble --final    # what submit uses: the students (+ teachers), pseudo.*

OOF: each training row is predicted by the one fold model that never saw it; models are
averaged. Test: the mean over every fold and model. Multi-label: per-class decision thresholds
are tuned on the OOF blend to maximise competition.metric (never worse than 0.5 there).

Teachers write ensemble/{oof,test}.csv, ensemble/thresholds.json ({metric, thresholds: {class:
t} or null}), metrics/cv.json (`dvc metrics show`: the metric, its CV value, every applicable
metric, the value per backbone and, for multi-label, every metric at threshold 0.5) and
metrics/confusion.csv (actual, predicted), the OOF confusion matrix of `dvc plots show`.

`--final` blends the students (students/preds/), with `pseudo.blend_teachers` the teachers too,
or the teachers alone with `pseudo.enabled: false`; it writes final/ (the same three files),
metrics/final.json (teacher CV, student CV and their difference side by side, and the CV of what
is submitted) and metrics/final_confusion.csv.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from pipeline import metrics
from pipeline.files import PipelineError, atomic_dir, read_json, write_csv, write_json
from pipeline.index import Index, encode_labels, read_index
from pipeline.params import Params, load_params
from pipeline.preds import blend, read_preds
from pipeline.roles import STUDENT, TEACHER, skipped


def member_oof(index: Index, folder: Path, folds: list[int]) -> pd.DataFrame:
    """One model's out-of-fold predictions: every training id exactly once, in index order."""
    oof = pd.concat([read_preds(folder / f"fold{k}" / "oof.csv", index.classes) for k in folds])
    if oof.index.duplicated().any() or set(oof.index) != set(index.train["id"]):
        raise PipelineError(f"{folder}: OOF predictions do not cover each training id once")
    return oof.loc[index.train["id"]]


def blend_members(index: Index, members: dict[str, Path], folds: list[int]):
    """(OOF blend, test blend, OOF per member) over model folders `{label: preds/<model>}`."""
    oofs = {name: member_oof(index, folder, folds) for name, folder in members.items()}
    tests = [
        read_preds(folder / f"fold{k}" / "test.csv", index.classes)
        for folder in members.values()
        for k in folds
    ]
    return blend(list(oofs.values())), blend(tests).loc[index.test["id"]], oofs


def score(index: Index, metric: str, oof: pd.DataFrame, oofs: dict[str, pd.DataFrame]):
    """(CV report, thresholds) of an OOF blend; thresholds tuned on it for multi-label."""
    task = index.meta["task"]
    metrics.check_applies(metric, task)
    targets = encode_labels(index.train["label"], index.classes, task)
    oof_np = oof.to_numpy()
    thresholds = metrics.tune_thresholds(metric, oof_np, targets)
    report = metrics.report(oof_np, targets, thresholds)
    per_model = {
        n: metrics.value(metric, o.to_numpy(), targets, thresholds) for n, o in oofs.items()
    }
    cv = {"metric": metric, "cv": report[metric], **report, "per_model": per_model}
    if task == "multi_label":
        cv["at_threshold_0.5"] = metrics.report(oof_np, targets, 0.5)
    return cv, thresholds


def write_blend(index: Index, metric: str, oof, test, thresholds, out: Path, confusion: Path):
    decision = {"metric": metric, "thresholds": None}
    if index.meta["task"] == "multi_label":
        decision["thresholds"] = {
            c: float(t) for c, t in zip(index.classes, thresholds, strict=True)
        }
    with atomic_dir(out) as tmp:  # the three files appear together or not at all
        write_csv(tmp / "oof.csv", oof.reset_index())
        write_csv(tmp / "test.csv", test.reset_index())
        write_json(tmp / "thresholds.json", decision)
    targets = encode_labels(index.train["label"], index.classes, index.meta["task"])
    pairs = metrics.confusion_pairs(oof.to_numpy(), targets, index.classes, metric, thresholds)
    write_csv(confusion, pairs)


def run(
    backbones: list[str],
    folds: list[int],
    metric: str,
    preds: Path = TEACHER.preds,
    out: Path = Path("ensemble"),
    out_metrics: Path = Path("metrics/cv.json"),
    out_confusion: Path = Path("metrics/confusion.csv"),
) -> dict:
    index = read_index()
    oof, test, oofs = blend_members(index, {n: preds / n for n in backbones}, folds)
    cv, thresholds = score(index, metric, oof, oofs)
    write_blend(index, metric, oof, test, thresholds, out, out_confusion)
    write_json(out_metrics, cv)
    others = ", ".join(f"{k} {v:.4f}" for k, v in cv.items() if isinstance(v, float) and k != "cv")
    print(
        f"ensemble: {len(backbones)} backbone(s) x {len(folds)} folds, CV {metric} "
        f"{cv['cv']:.4f} ({others})"
    )
    return cv


def final_members(p: Params) -> dict[str, Path]:
    """What the submission blends: students (+ teachers), or the teachers alone."""
    teachers = {f"teacher {n}": TEACHER.preds / n for n in p.train.backbones}
    if not p.pseudo.enabled:
        return teachers
    students = {f"student {n}": STUDENT.preds / n for n in p.pseudo.backbones}
    for folder in students.values():
        for k in p.base.folds:
            why = skipped(folder / f"fold{k}")
            if why is not None:
                raise PipelineError(f"{folder}/fold{k}: {why}; run `dvc repro` first")
    return {**students, **teachers} if p.pseudo.blend_teachers else students


def run_final(
    p: Params,
    teacher_cv: Path = Path("metrics/cv.json"),
    out: Path = Path("final"),
    out_metrics: Path = Path("metrics/final.json"),
    out_confusion: Path = Path("metrics/final_confusion.csv"),
) -> dict:
    index, metric, folds = read_index(), p.competition.metric, p.base.folds
    members = final_members(p)
    oof, test, oofs = blend_members(index, members, folds)
    cv, thresholds = score(index, metric, oof, oofs)
    write_blend(index, metric, oof, test, thresholds, out, out_confusion)
    if not teacher_cv.exists():
        raise PipelineError(f"{teacher_cv}: missing; run `dvc repro ensemble` first")
    teachers_cv = read_json(teacher_cv)
    if teachers_cv["metric"] != metric:
        raise PipelineError(f"{teacher_cv}: scored another metric; run `dvc repro ensemble`")
    teacher = teachers_cv["cv"]
    summary = {"metric": metric, "cv": cv["cv"], "submitted": ", ".join(members)}
    summary["teacher_cv"] = teacher
    if p.pseudo.enabled:
        students = {n: f for n, f in members.items() if n.startswith("student")}
        s_oof, _, s_oofs = blend_members(index, students, folds)
        student = score(index, metric, s_oof, s_oofs)[0]["cv"]
        summary |= {"student_cv": student, "student_minus_teacher": round(student - teacher, 6)}
        summary["pseudo_source"] = p.pseudo.source
        if p.pseudo.source == "ensemble":
            summary["warning"] = "pseudo.source: ensemble leaks validation labels: CV optimistic"
    write_json(out_metrics, {**summary, "report": cv})
    print_final(summary)
    return summary


def print_final(s: dict) -> None:
    m = s["metric"]
    line = f"ensemble --final: submitting {s['submitted']}, CV {m} {s['cv']:.4f}"
    if "student_cv" in s:
        line += (
            f" | teachers {s['teacher_cv']:.4f}, students {s['student_cv']:.4f} "
            f"({s['student_minus_teacher']:+.4f})"
        )
    print(line)
    if "warning" in s:
        print(f"WARNING: {s['warning']}")


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipeline ensemble")
    ap.add_argument("--final", action="store_true", help="the blend that submit uses")
    a = ap.parse_args(argv)
    p = load_params()
    if a.final:
        run_final(p)
    else:
        run(p.train.backbones, p.base.folds, p.competition.metric)

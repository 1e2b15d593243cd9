"""ensemble: blend every model's fold predictions; score the out-of-fold blend honestly.

    python -m pipeline ensemble            # the teachers: train.backbones, base.folds, ensemble.*
    python -m pipeline ensemble --final    # what submit uses: the students (+ teachers), pseudo.*

A member is one backbone's predictions (with its TTA), or with `ensemble.snapshots` the mean of
its SGDR snapshots. OOF: each training row is predicted by the one fold model that never saw it.
Test: the mean over folds. Members are averaged with equal weights, or with `ensemble.weights:
fit` non-negative weights summing to one that minimise the log loss (BCE for multi-label):
fold k's rows are blended with weights fitted on the other folds' rows, the test set with weights
fitted on every OOF row. Multi-label: per-class thresholds for fold k's rows are tuned on the
other folds' blended rows; the test set's on all of them. The CV is therefore never scored on
rows that chose its weights or thresholds.

Teachers write ensemble/ (oof and test, prediction files: pipeline/preds.py), ensemble/
thresholds.json ({metric, thresholds: {class: t} or null}), metrics/cv.json (`dvc metrics show`:
the metric, its CV value, every applicable metric, the CV of every backbone with and without
TTA, of every snapshot set, the blend weights and, for multi-label, every metric at threshold
0.5) and metrics/confusion.csv (actual, predicted), the OOF confusion matrix of `dvc plots
show`.

`--final` blends the students (students/preds/), with `pseudo.blend_teachers` the teachers too,
or the teachers alone with `pseudo.enabled: false`; it writes final/ (the same three files),
metrics/final.json (teacher CV, student CV and their difference side by side, and the CV of what
is submitted) and metrics/final_confusion.csv.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from pipeline import metrics
from pipeline.files import PipelineError, atomic_dir, read_json, write_csv, write_json
from pipeline.index import Index, encode_labels, read_index
from pipeline.params import Ensemble, Params
from pipeline.preds import has_preds, mean_preds, weighted_mean, write_preds
from pipeline.roles import TEACHER, final_members, flag_and_params, student_members, teacher_members

EQUAL = Ensemble(weights="equal", snapshots=False)


@dataclass(frozen=True)
class Member:
    """One blend member's OOF (every training id, index order) and test (mean over folds, index
    order) probabilities, float32: one array of each per member, filled a fold at a time."""

    oof: np.ndarray
    test: np.ndarray
    fold: np.ndarray  # the fold whose model predicted each OOF row


@dataclass(frozen=True)
class Blend:
    oof: np.ndarray  # index.train's rows
    test: np.ndarray  # index.test's rows
    report: dict  # every metric of the OOF blend, honest thresholds
    thresholds: np.ndarray  # for the test set (multi-label; 0.5 otherwise)
    row_thresholds: np.ndarray | float  # multi-label (rows, classes): each OOF row's; else 0.5
    weights: list[float]  # per member, fitted on every OOF row (what the test set uses)


def read_member(index: Index, fold_dirs: dict[int, list[Path]], suffix: str = "") -> Member:
    """fold k -> the folders averaged into fold k's predictions (one model, or its snapshots)."""
    train_ids, test_ids = pd.Index(index.train["id"]), pd.Index(index.test["id"])
    oof = np.zeros((len(train_ids), len(index.classes)), np.float32)
    test, fold = np.zeros((len(test_ids), len(index.classes)), np.float32), np.full(len(oof), -1)
    for k, dirs in fold_dirs.items():
        ids, probs = mean_preds([(d, f"oof{suffix}") for d in dirs], index.classes)
        rows = train_ids.get_indexer(ids)
        if (rows < 0).any() or (fold[rows] >= 0).any():  # mean_preds: each id once a file
            raise not_covered(fold_dirs)
        oof[rows], fold[rows] = probs, k
        test += mean_preds([(d, f"test{suffix}") for d in dirs], index.classes, test_ids)[1]
    if (fold < 0).any():
        raise not_covered(fold_dirs)
    return Member(oof, test / len(fold_dirs), fold)


def not_covered(fold_dirs: dict[int, list[Path]]) -> PipelineError:
    where = next(iter(fold_dirs.values()))[0].parent
    return PipelineError(f"{where}: OOF predictions do not cover each training id once")


def snapshot_dirs(folder: Path, folds: list[int]) -> dict[int, list[Path]] | None:
    """Each fold's SGDR snapshot prediction folders, or None where a fold has none."""
    found = {k: sorted((folder / f"fold{k}" / "snapshots").glob("cycle*")) for k in folds}
    return found if all(found.values()) else None


def variants(index: Index, label: str, folder: Path, folds: list[int]) -> dict[str, Member]:
    """A model's members as reported: with TTA, without, and its snapshot set if it has one."""
    plain = {k: [folder / f"fold{k}"] for k in folds}
    out = {label: read_member(index, plain)}
    if all(has_preds(d[0], "oof_plain") for d in plain.values()):  # predict writes them with TTA
        out[f"{label} (no TTA)"] = read_member(index, plain, "_plain")
    snaps = snapshot_dirs(folder, folds)
    if snaps is not None:
        out[f"{label} snapshots"] = read_member(index, snaps)
    return out


def blend_loss(probs: np.ndarray, targets: np.ndarray) -> float:
    """Log loss of probabilities (BCE per class and row for multi-label): what `fit` minimises."""
    return float(metrics.row_log_loss(probs, targets).mean())


def fit_weights(stack: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Non-negative weights summing to one over members (M, rows, classes), by log loss."""
    m = len(stack)
    if m == 1:
        return np.ones(1)
    res = minimize(
        lambda w: blend_loss(np.tensordot(w, stack, 1), targets),
        np.full(m, 1 / m),
        method="SLSQP",
        bounds=[(0.0, 1.0)] * m,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}],
    )
    w = np.clip(res.x, 0, None)
    return w / w.sum()


def evaluate(
    index: Index, metric: str, members: dict[str, Member], mode: str, every: bool = True
) -> Blend:
    """Blend members (`mode`: equal | fit) and score the OOF blend without peeking: fold k's
    rows take weights and thresholds chosen on the other folds' rows. The report holds every
    metric that applies, or with `every` false the competition's alone."""
    task = index.meta["task"]
    metrics.check_applies(metric, task)
    targets = encode_labels(index.train["label"], index.classes, task)
    fold, n = next(iter(members.values())).fold, len(members)
    tuned = task == "multi_label"
    stack = np.stack([m.oof for m in members.values()]) if mode == "fit" and n > 1 else None

    def weights(rows: np.ndarray) -> np.ndarray:
        return np.full(n, 1 / n) if stack is None else fit_weights(stack[:, rows], targets[rows])

    w_all = weights(np.ones(len(fold), dtype=bool))
    full = weighted_mean([m.oof for m in members.values()], w_all)
    oof = full if stack is None else np.zeros_like(full)
    row_thr = np.full(full.shape, 0.5, np.float32) if tuned else 0.5
    for k in np.unique(fold) if stack is not None or tuned else []:
        rows, other = fold == k, fold != k
        part = full if stack is None else np.tensordot(weights(other), stack, 1)
        oof[rows] = part[rows]
        if tuned:
            row_thr[rows] = metrics.tune_thresholds(metric, part[other], targets[other])
    thresholds = (
        metrics.tune_thresholds(metric, full, targets) if tuned else np.full(full.shape[1], 0.5)
    )
    test = weighted_mean([m.test for m in members.values()], w_all)
    report = (
        metrics.report(oof, targets, row_thr)
        if every
        else {metric: round(metrics.value(metric, oof, targets, row_thr), 6)}
    )
    return Blend(oof, test, report, thresholds, row_thr, [float(w) for w in w_all])


def cv_report(index: Index, metric: str, chosen: dict[str, Member], reported, mode: str):
    """(Blend of `chosen`, cv.json): the blend's CV beside every reported member's own."""
    b = evaluate(index, metric, chosen, mode)
    singles = {
        n: evaluate(index, metric, {n: m}, "equal", every=False).report[metric]
        for n, m in reported.items()
    }
    cv = {"metric": metric, "cv": b.report[metric], **b.report}
    cv["members"] = {n: round(w, 6) for n, w in zip(chosen, b.weights, strict=True)}  # test set
    cv["single"] = singles  # every backbone with and without TTA, every snapshot set
    cv["per_model"] = {n: v for n, v in singles.items() if n in chosen}
    top = best(metric, list(singles.values()))
    cv["blend_minus_best_single"] = round(b.report[metric] - top, 6)
    if index.meta["task"] == "multi_label":
        targets = encode_labels(index.train["label"], index.classes, "multi_label")
        cv["at_threshold_0.5"] = metrics.report(b.oof, targets, 0.5)
    return b, cv


def best(metric: str, values: list[float]) -> float:
    return max(values) if metrics.METRICS[metric].higher_is_better else min(values)


def collect(index: Index, folders: dict[str, Path], folds: list[int], snapshots: bool):
    """(members blended, members reported) over model folders `{label: preds/<model>}`."""
    reported, chosen = {}, {}
    for label, folder in folders.items():
        found = variants(index, label, folder, folds)
        reported |= found
        chosen[label] = found[label]
        if snapshots:
            if f"{label} snapshots" not in found:
                raise PipelineError(
                    f"ensemble.snapshots: {folder} has no SGDR snapshots; set train.schedule: "
                    "sgdr (a snapshot per cycle) or ensemble.snapshots: false"
                )
            chosen[f"{label} snapshots"] = found[f"{label} snapshots"]
    return chosen, reported


def write_blend(index: Index, metric: str, b: Blend, names, out: Path, confusion: Path) -> None:
    """oof and test predictions, thresholds.json ({metric, thresholds, weights: {member: its exact
    weight on the test set}}, what an exported kernel blends with) in `out`; the confusion pairs."""
    decision = {"metric": metric, "thresholds": None}
    decision["weights"] = dict(zip(names, b.weights, strict=True))
    if index.meta["task"] == "multi_label":
        decision["thresholds"] = {
            c: float(t) for c, t in zip(index.classes, b.thresholds, strict=True)
        }
    targets = encode_labels(index.train["label"], index.classes, index.meta["task"])
    pairs = metrics.confusion_pairs(b.oof, targets, index.classes, metric, b.row_thresholds)
    with atomic_dir(out) as tmp:  # the files appear together or not at all
        write_preds(tmp, "oof", index.train["id"], b.oof, index.classes)
        write_preds(tmp, "test", index.test["id"], b.test, index.classes)
        write_json(tmp / "thresholds.json", decision)
    write_csv(confusion, pairs)


def run(
    backbones: list[str],
    folds: list[int],
    metric: str,
    settings: Ensemble = EQUAL,
    preds: Path = TEACHER.preds,
    out: Path = Path("ensemble"),
    out_metrics: Path = Path("metrics/cv.json"),
    out_confusion: Path = Path("metrics/confusion.csv"),
) -> dict:
    index = read_index()
    chosen, reported = collect(index, {n: preds / n for n in backbones}, folds, settings.snapshots)
    b, cv = cv_report(index, metric, chosen, reported, settings.weights)
    write_blend(index, metric, b, list(chosen), out, out_confusion)
    write_json(out_metrics, cv)
    print_report("ensemble", cv, settings.weights)
    return cv


def print_report(title: str, cv: dict, mode: str) -> None:
    m = cv["metric"]
    print(f"{title}: CV {m} per member (OOF, each alone):")
    for name, v in cv["single"].items():
        print(f"  {name:<40} {v:.4f}")
    weights = ", ".join(f"{n} {w:.3f}" for n, w in cv["members"].items())
    print(f"  {'blend (' + mode + ' weights)':<40} {cv['cv']:.4f}   weights: {weights}")


def rounds_cv(index: Index, p: Params) -> dict[str, float]:
    """Each round's students' blend CV, round by round."""
    metric, ens = p.competition.metric, p.ensemble
    out = {}
    for r in range(1, p.pseudo.rounds + 1):
        chosen, _ = collect(index, student_members(p, r), p.base.folds, ens.snapshots)
        out[str(r)] = evaluate(index, metric, chosen, ens.weights, every=False).report[metric]
    return out


def run_final(
    p: Params,
    teacher_cv: Path = Path("metrics/cv.json"),
    out: Path = Path("final"),
    out_metrics: Path = Path("metrics/final.json"),
    out_confusion: Path = Path("metrics/final_confusion.csv"),
) -> dict:
    """Every check first, then final/ and its metrics: a refusal leaves the last ones as is."""
    index, metric, folds, ens = read_index(), p.competition.metric, p.base.folds, p.ensemble
    teacher = teachers_score(teacher_cv, metric)
    members = final_members(p)
    chosen, reported = collect(index, members, folds, ens.snapshots)
    b, cv = cv_report(index, metric, chosen, reported, ens.weights)
    summary = {"metric": metric, "cv": cv["cv"], "submitted": ", ".join(members)}
    summary["teacher_cv"] = teacher
    if p.pseudo.enabled:
        summary |= students_summary(index, p, chosen, teacher, b) | {"control": p.pseudo.control}
        t_chosen, t_reported = collect(index, teacher_members(p), folds, ens.snapshots)
        t_blend = evaluate(index, metric, t_chosen, ens.weights, every=False)  # its metric only
        fold = next(iter(chosen.values())).fold
        why = students_worse(index, metric, fold, b, t_blend)
        summary["students_worse"] = why
        if why is not None and p.pseudo.submit == "auto":  # the teachers' full report after all
            chosen, (b, cv) = t_chosen, cv_report(index, metric, t_chosen, t_reported, ens.weights)
            summary |= {"cv": cv["cv"], "submitted": ", ".join(t_chosen), "fell_back": why}
    write_blend(index, metric, b, list(chosen), out, out_confusion)
    write_json(out_metrics, {**summary, "report": cv})
    print_report("ensemble --final", cv, ens.weights)
    print_final(summary)
    return summary


def per_fold(index: Index, metric: str, fold: np.ndarray, b: Blend) -> np.ndarray:
    """The blend's metric on each fold's OOF rows (decided with the thresholds those rows had)."""
    targets = encode_labels(index.train["label"], index.classes, index.meta["task"])
    thr = b.row_thresholds

    def rows_thr(rows: np.ndarray):
        return thr if np.isscalar(thr) else thr[rows]

    return np.array([
        round(metrics.value(metric, b.oof[fold == k], targets[fold == k], rows_thr(fold == k)), 6)
        for k in np.unique(fold)
    ])  # fmt: skip


def students_worse(
    index: Index, metric: str, fold: np.ndarray, students: Blend, teachers: Blend
) -> str | None:
    """Why the students' blend is worse than the teachers' beyond noise, or None: on the same
    OOF rows, the CV difference exceeds the standard error of the per-fold differences."""
    sign = 1 if metrics.METRICS[metric].higher_is_better else -1
    diff = sign * (
        per_fold(index, metric, fold, students) - per_fold(index, metric, fold, teachers)
    )
    gap = sign * (students.report[metric] - teachers.report[metric])
    se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else 0.0
    if gap >= 0 or -gap <= se:
        return None
    return (
        f"the students' CV {metric} {students.report[metric]:.4f} is worse than the teachers' "
        f"{teachers.report[metric]:.4f} by more than the standard error of the per-fold "
        f"differences ({se:.4f})"
    )


def students_summary(
    index: Index, p: Params, chosen: dict[str, Member], teacher: float, b: Blend
) -> dict:
    """The students' own CV beside the teachers', and where their pseudolabels came from (`b`:
    the blend of `chosen`, which is the students' own unless teachers are blended in)."""
    metric = p.competition.metric
    students = {n: m for n, m in chosen.items() if n.startswith("student")}
    if len(students) < len(chosen):
        b = evaluate(index, metric, students, p.ensemble.weights, every=False)
    student = b.report[metric]
    out = {"student_cv": student, "student_minus_teacher": round(student - teacher, 6)}
    out["pseudo_source"] = p.pseudo.source
    if p.pseudo.rounds > 1:
        out["rounds"] = rounds_cv(index, p)
    if p.pseudo.source == "ensemble":
        out["warning"] = "pseudo.source: ensemble leaks validation labels: CV optimistic"
    return out


def teachers_score(path: Path, metric: str) -> float:
    """The teachers' CV (`ensemble`'s metrics/cv.json), which final.json sets beside its own."""
    if not path.exists():
        raise PipelineError(f"{path}: missing; run `dvc repro ensemble` first")
    teachers_cv = read_json(path)
    if teachers_cv.get("metric") != metric or "cv" not in teachers_cv:
        raise PipelineError(
            f"{path}: scored {teachers_cv.get('metric')}, not competition.metric {metric}; "
            "run `dvc repro ensemble`"
        )
    return teachers_cv["cv"]


def print_final(s: dict) -> None:
    m = s["metric"]
    line = f"ensemble --final: submitting {s['submitted']}, CV {m} {s['cv']:.4f}"
    if "student_cv" in s:
        line += (
            f" | teachers {s['teacher_cv']:.4f}, students {s['student_cv']:.4f} "
            f"({s['student_minus_teacher']:+.4f})"
        )
    print(line)
    if "rounds" in s:
        cvs = ", ".join(f"round {r} {v:.4f}" for r, v in s["rounds"].items())
        print(f"ensemble --final: students' CV {m} per round: {cvs}")
    if s.get("control"):
        print("ensemble --final: pseudo.control: these students saw no pseudolabels (the control)")
    if s.get("fell_back"):
        print(f"ensemble --final: submitting the teachers: {s['fell_back']} (pseudo.submit: auto)")
    elif s.get("students_worse"):
        print(f"WARNING: {s['students_worse']}; submitting them as pseudo.submit: students asks")
    if "warning" in s:
        print(f"WARNING: {s['warning']}")


def main(argv: list[str]) -> None:
    final, p = flag_and_params("ensemble", "final", "the blend that submit uses", argv)
    if final:
        run_final(p)
    else:
        run(p.train.backbones, p.base.folds, p.competition.metric, p.ensemble)

"""submit: shape the blended test predictions like sample_submission.csv, check, then write.

    python -m pipeline submit

The blend is final/ (ensemble --final: the students, or the teachers with pseudo.enabled false).
Writes submissions/submission.csv with exactly sample_submission's columns and id order, only
after it passes the same check the upload stage applies. Its shape is meta.json's
submission_kind: label (class names, integers where the sample has integers; expected-value
decoding for qwk), probs (a column per class), binary (P(positive_class)) or tags (space-separated,
with the per-class thresholds of the blend's thresholds.json). When the competition ships a private
solution.csv (the demo does), prints the local leaderboard score into
submissions/local_score.json (which otherwise says there is none), and beside it the score the
teachers' blend (ensemble/) would have had.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import metrics
from pipeline.files import PipelineError, write_json, write_probs_csv
from pipeline.index import Index, encode_labels, read_index
from pipeline.params import load_params
from pipeline.preds import read_probs, read_thresholds

SUBMISSION = Path("submissions/submission.csv")
LOCAL_SCORE = Path("submissions/local_score.json")


def submission_probs(sub: pd.DataFrame, meta: dict) -> np.ndarray:
    """The submission read back as class probabilities (N, C) in meta's class order."""
    classes, kind, col = meta["classes"], meta["submission_kind"], sub.columns[1]
    if kind == "probs":
        return sub[classes].to_numpy(dtype=float)
    if kind == "binary":
        p = sub[col].to_numpy(dtype=float)
        return np.where(np.array(classes) == meta["positive_class"], p[:, None], 1 - p[:, None])
    if kind == "tags":
        return encode_labels(sub[col].astype(str), classes, "multi_label")
    return np.eye(len(classes))[encode_labels(sub[col].astype(str), classes, "single_label")]


def read_solution(path: Path) -> pd.DataFrame:
    """A private solution's ids and truth: its first two columns (id, label or tags) as text."""
    solution = pd.read_csv(path, dtype=str, keep_default_na=False)
    return solution.iloc[:, :2].set_axis(["id", "truth"], axis=1)


def local_score(sub: pd.DataFrame, solution_path: Path, meta: dict, metric: str) -> dict:
    """Score against a private solution (id, label or tags) the way the leaderboard would.

    Rows whose truth holds a class the training labels never had cannot be scored by a model
    that knows no such class: they are left out and counted (unscored_rows, their ids and the
    unknown classes), and the score is over the other rows."""
    truth = read_solution(solution_path)
    merged = truth.merge(sub.astype({sub.columns[0]: str}), left_on="id", right_on=sub.columns[0])
    if len(merged) != len(truth):
        raise PipelineError(
            f"{solution_path}: {len(truth) - len(merged)} ids not in the submission"
        )
    unknown = unknown_classes(merged["truth"], meta)
    scored = merged[[not u for u in unknown]]
    out: dict = {"rows": len(scored)}
    if len(scored):
        targets = encode_labels(scored["truth"], meta["classes"], meta["task"])
        probs = submission_probs(scored[list(sub.columns)], meta)
        out = {metric: metrics.value(metric, probs, targets), **out}
    if len(scored) < len(merged):
        out["unscored_rows"] = len(merged) - len(scored)
        out["unscored_ids"] = merged["id"][[bool(u) for u in unknown]].tolist()
        out["unknown_classes"] = sorted({c for u in unknown for c in u})
    return out


def unknown_classes(truth: pd.Series, meta: dict) -> list[set[str]]:
    """Per row, the classes (tags) of its truth that the training labels never had."""
    known = set(meta["classes"])
    tags = meta["task"] == "multi_label"
    return [set(t.split() if tags else [t]) - known for t in truth]


def unscored_note(score: dict, solution: Path) -> str:
    if "unscored_rows" not in score:
        return ""
    ids, n = score["unscored_ids"], score["unscored_rows"]
    shown = ", ".join(ids[:5]) + (", ..." if n > 5 else "")
    return (
        f"; {n} of {n + score['rows']} rows not scored: {solution} gives them classes the "
        f"training labels never had ({', '.join(score['unknown_classes'][:5])}): ids {shown} "
        f"(all in {LOCAL_SCORE})"
    )


def shaped(index: Index, metric: str, blend: Path, out: Path) -> pd.DataFrame:
    """A blend folder's test predictions (and thresholds.json) as a checked submission."""
    sample = metrics.read_sample(index.root / "sample_submission.csv")
    meta, classes = index.meta, index.classes
    ids, probs = read_probs(blend, "test", classes)
    sub = metrics.shape_submission(
        ids.tolist(),
        probs,
        classes,
        sample,
        meta["submission_kind"],
        metric=metric,
        positive_class=meta.get("positive_class"),
        thresholds=read_thresholds(blend / "thresholds.json", classes),
    )
    metrics.validate_submission(sub, sample, classes, meta["submission_kind"], source=str(out))
    return sub


def run(
    metric: str,
    blend: Path = Path("final"),
    out: Path = SUBMISSION,
    raw: Path = Path("data/raw"),
    teachers: Path | None = Path("ensemble"),
) -> None:
    """Write the submission from `blend`; with a local solution, score it and `teachers`."""
    index = read_index()
    sub = shaped(index, metric, blend, out)
    write_probs_csv(out, sub)
    kind = index.meta["submission_kind"]
    print(f"submit: {len(sub)} rows, columns {list(sub.columns)[:6]} ({kind}) -> {out}")
    solution = raw / "solution.csv"
    if not solution.exists():  # real competitions: the leaderboard is Kaggle's (upload stage)
        write_json(LOCAL_SCORE, {"rows": 0, "note": f"no {solution}: no local leaderboard"})
        return
    score = local_score(sub, solution, index.meta, metric)
    value = f"{score[metric]:.4f}" if metric in score else "not computable"
    note = f"(private {solution}, never read by training){unscored_note(score, solution)}"
    print(f"submit: local leaderboard {metric} {value} {note}")
    if teachers is not None and teachers != blend and metric in score:
        alone = local_score(shaped(index, metric, teachers, out), solution, index.meta, metric)
        score["teachers"] = {metric: alone[metric]}
        print(f"submit: the teachers alone would score {metric} {alone[metric]:.4f}")
    write_json(LOCAL_SCORE, score)


def main(argv: list[str]) -> None:
    argparse.ArgumentParser(prog="python -m pipeline submit").parse_args(argv)
    run(load_params().competition.metric)

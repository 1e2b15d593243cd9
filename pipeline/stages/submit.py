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
from pipeline.files import PipelineError, read_json, write_csv, write_json
from pipeline.index import Index, encode_labels, read_index
from pipeline.params import load_params

SUBMISSION = Path("submissions/submission.csv")
LOCAL_SCORE = Path("submissions/local_score.json")


def read_sample(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise PipelineError(f"{path}: missing; run `dvc repro prepare` first")
    id_col = pd.read_csv(path, nrows=0).columns[0]
    return pd.read_csv(path, dtype={id_col: str}, keep_default_na=False)


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


def local_score(sub: pd.DataFrame, solution_path: Path, meta: dict, metric: str) -> dict:
    """Score against a private solution (id, label or tags) the way the leaderboard would."""
    solution = pd.read_csv(solution_path, dtype=str, keep_default_na=False)
    truth = solution.iloc[:, :2].set_axis(["id", "truth"], axis=1)
    merged = truth.merge(sub.astype({sub.columns[0]: str}), left_on="id", right_on=sub.columns[0])
    if len(merged) != len(truth):
        raise PipelineError(
            f"{solution_path}: {len(truth) - len(merged)} ids not in the submission"
        )
    targets = encode_labels(merged["truth"], meta["classes"], meta["task"])
    probs = submission_probs(merged[list(sub.columns)], meta)
    return {metric: metrics.value(metric, probs, targets), "rows": len(merged)}


def read_thresholds(path: Path, classes: list[str]) -> np.ndarray | None:
    if not path.exists():
        raise PipelineError(f"{path}: missing; run `dvc repro ensemble` first")
    tuned = read_json(path)["thresholds"]
    return None if tuned is None else np.array([tuned[c] for c in classes])


def shaped(index: Index, metric: str, blend: Path, out: Path) -> pd.DataFrame:
    """A blend folder's test predictions (test.csv, thresholds.json) as a checked submission."""
    sample = read_sample(index.root / "sample_submission.csv")
    preds = blend / "test.csv"
    if not preds.exists():
        raise PipelineError(f"{preds}: missing; run `dvc repro` first")
    test = pd.read_csv(preds, dtype={"id": str}, keep_default_na=False)
    meta, classes = index.meta, index.classes
    sub = metrics.shape_submission(
        test["id"].tolist(),
        test[classes].to_numpy(),
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
    write_csv(out, sub)
    kind = index.meta["submission_kind"]
    print(f"submit: {len(sub)} rows, columns {list(sub.columns)[:6]} ({kind}) -> {out}")
    solution = raw / "solution.csv"
    if not solution.exists():  # real competitions: the leaderboard is Kaggle's (upload stage)
        write_json(LOCAL_SCORE, {"rows": 0, "note": f"no {solution}: no local leaderboard"})
        return
    score = local_score(sub, solution, index.meta, metric)
    note = f"(private {solution}, never read by training)"
    print(f"submit: local leaderboard {metric} {score[metric]:.4f} {note}")
    if teachers is not None and teachers != blend:
        alone = local_score(shaped(index, metric, teachers, out), solution, index.meta, metric)
        score["teachers"] = {metric: alone[metric]}
        print(f"submit: the teachers alone would score {metric} {alone[metric]:.4f}")
    write_json(LOCAL_SCORE, score)


def main(argv: list[str]) -> None:
    argparse.ArgumentParser(prog="python -m pipeline submit").parse_args(argv)
    run(load_params().competition.metric)

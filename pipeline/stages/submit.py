"""submit: shape the blended test predictions like sample_submission.csv, check, then write.

    python -m pipeline submit

Writes submissions/submission.csv with exactly sample_submission's columns and id order, only
after it passes the same check the upload stage applies. When the competition ships a private
solution.csv (the demo does), prints the local leaderboard score into
submissions/local_score.json (which otherwise says there is none).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import metrics
from pipeline.data import read_index
from pipeline.files import PipelineError, write_csv, write_json
from pipeline.params import load_params

SUBMISSION = Path("submissions/submission.csv")
LOCAL_SCORE = Path("submissions/local_score.json")


def read_sample(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise PipelineError(f"{path}: missing; run `dvc repro prepare` first")
    id_col = pd.read_csv(path, nrows=0).columns[0]
    return pd.read_csv(path, dtype={id_col: str}, keep_default_na=False)


def local_score(sub: pd.DataFrame, solution_path: Path, classes: list[str], metric: str) -> dict:
    """Score against a private solution (id, label) the way the leaderboard would."""
    solution = pd.read_csv(solution_path, dtype=str)
    id_col, label_col = sub.columns[:2]
    merged = solution.set_axis(["id", "truth"], axis=1).merge(
        sub.astype(str).set_axis(["id", "pred"], axis=1), on="id", how="left"
    )
    lookup = {c: i for i, c in enumerate(classes)}
    onehot = np.eye(len(classes))[merged["pred"].map(lookup).to_numpy()]
    return {
        metric: metrics.report(onehot, merged["truth"].map(lookup).to_numpy())[metric],
        "rows": len(merged),
    }


def run(
    metric: str,
    preds: Path = Path("ensemble/test.csv"),
    out: Path = SUBMISSION,
    raw: Path = Path("data/raw"),
) -> None:
    index = read_index()
    sample = read_sample(index.root / "sample_submission.csv")
    if not preds.exists():
        raise PipelineError(f"{preds}: missing; run `dvc repro ensemble` first")
    test = pd.read_csv(preds, dtype={"id": str})
    kind = index.meta["submission_kind"]
    sub = metrics.shape_submission(
        test["id"].tolist(), test[index.classes].to_numpy(), index.classes, sample, kind
    )
    metrics.validate_submission(sub, sample, index.classes, kind, source=str(out))
    write_csv(out, sub)
    print(f"submit: {len(sub)} rows, columns {list(sub.columns)} -> {out}")
    solution = raw / "solution.csv"
    if solution.exists():
        score = local_score(sub, solution, index.classes, metric)
        write_json(LOCAL_SCORE, score)
        print(
            f"submit: local leaderboard {metric} {score[metric]:.4f} "
            f"(private {solution}, never read by training)"
        )
    else:  # real competitions: the leaderboard is Kaggle's (see the upload stage)
        write_json(LOCAL_SCORE, {"rows": 0, "note": f"no {solution}: no local leaderboard"})


def main(argv: list[str]) -> None:
    argparse.ArgumentParser(prog="python -m pipeline submit").parse_args(argv)
    run(load_params().competition.metric)

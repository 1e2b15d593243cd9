"""folds: assign every training row to one validation fold, stratified by label and seeded.

    python -m pipeline folds               # reads base.seed and base.folds from params.yaml

Writes folds/folds.csv (id, label, fold); the same params always give the same file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from pipeline.data import FOLDS, read_index
from pipeline.files import PipelineError, write_csv
from pipeline.params import load_params


def make_folds(train: pd.DataFrame, n_folds: int, seed: int) -> pd.DataFrame:
    counts = train["label"].value_counts()
    if counts.min() < n_folds:
        raise PipelineError(
            f"class '{counts.idxmin()}' has {counts.min()} images, fewer than the {n_folds} folds "
            "in base.folds; use fewer folds"
        )
    fold = np.empty(len(train), dtype=int)
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, valid) in enumerate(splitter.split(np.zeros(len(train)), train["label"])):
        fold[valid] = k
    return pd.DataFrame({"id": train["id"], "label": train["label"], "fold": fold})


def run(seed: int, n_folds: int, out: Path = FOLDS) -> None:
    folds = make_folds(read_index().train, n_folds, seed)
    write_csv(out, folds)
    print(
        f"folds: {n_folds} stratified folds of "
        f"{folds['fold'].value_counts().sort_index().tolist()} rows -> {out}"
    )


def main(argv: list[str]) -> None:
    argparse.ArgumentParser(prog="python -m pipeline folds").parse_args(argv)
    base = load_params().base
    run(base.seed, len(base.folds))

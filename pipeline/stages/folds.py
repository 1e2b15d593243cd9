"""folds: assign every training row to one validation fold, seeded from base.seed.

    python -m pipeline folds               # reads base.seed and base.folds from params.yaml

Single-label: stratified by label. Multi-label: iterative stratification over the tags (every
tag keeps its frequency in every fold). With a `group` column in the index (from
competition.group_column): all rows of a group share a fold, stratified as far as groups allow.
Writes folds/folds.csv (id, label, fold); the same params always give the same file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold, StratifiedKFold

from pipeline.files import PipelineError, write_csv
from pipeline.index import FOLDS, encode_labels, label_counts, read_index, tag_set
from pipeline.params import load_params


def _check_sizes(train: pd.DataFrame, n_folds: int, task: str) -> None:
    counts = label_counts(train["label"], task)
    what = "tag" if task == "multi_label" else "class"
    fewer = "use fewer folds (base.folds)" if n_folds > 2 else "two folds are the fewest possible"
    if counts.min() < n_folds:
        fix = fewer if n_folds > 2 else f"{fewer}: add images of it, or merge or drop the {what}"
        raise PipelineError(
            f"{what} '{counts.idxmin()}' has {counts.min()} images, fewer than the {n_folds} folds "
            f"in base.folds; {fix}"
        )
    if "group" in train and train["group"].nunique() < n_folds:
        fix = fewer if n_folds > 2 else f"{fewer}: check competition.group_column"
        raise PipelineError(
            f"column 'group' has {train['group'].nunique()} groups, fewer than the {n_folds} "
            f"folds in base.folds; {fix}"
        )


def _splitter(train: pd.DataFrame, n_folds: int, seed: int, task: str):
    """(splitter, y, groups) for the task; every splitter shuffles with the seed."""
    grouped = "group" in train
    groups = train["group"].to_numpy() if grouped else None
    if task == "multi_label":
        y = encode_labels(train["label"], tag_set(train["label"]), task)
        if grouped:  # no multilabel splitter knows groups: shuffle the groups, then GroupKFold
            return GroupKFold(n_splits=n_folds), y, _shuffled_group_ids(groups, seed)
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold  # 1 s to import

        return MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed), y, None
    y = train["label"].to_numpy()
    if grouped:
        return StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed), y, groups
    return StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed), y, None


def _shuffled_group_ids(groups: np.ndarray, seed: int) -> np.ndarray:
    """Groups renamed in a seeded random order, so GroupKFold's assignment follows the seed."""
    names = pd.unique(groups)
    order = np.random.default_rng(seed).permutation(len(names))
    return pd.Series(groups).map(dict(zip(names, order, strict=True))).to_numpy()


def make_folds(train: pd.DataFrame, n_folds: int, seed: int, task: str) -> pd.DataFrame:
    _check_sizes(train, n_folds, task)
    splitter, y, groups = _splitter(train, n_folds, seed, task)
    fold = np.empty(len(train), dtype=int)
    for k, (_, valid) in enumerate(splitter.split(np.zeros((len(train), 1)), y, groups)):
        fold[valid] = k
    return pd.DataFrame({"id": train["id"], "label": train["label"], "fold": fold})


def run(seed: int, n_folds: int, out: Path = FOLDS) -> None:
    index = read_index()
    task = index.meta["task"]
    folds = make_folds(index.train, n_folds, seed, task)
    write_csv(out, folds)
    how = {"single_label": "stratified", "multi_label": "multilabel-stratified"}[task]
    how += ", grouped" if "group" in index.train else ""
    print(
        f"folds: {n_folds} {how} folds of "
        f"{folds['fold'].value_counts().sort_index().tolist()} rows -> {out}"
    )


def main(argv: list[str]) -> None:
    argparse.ArgumentParser(prog="python -m pipeline folds").parse_args(argv)
    base = load_params().base
    run(base.seed, len(base.folds))

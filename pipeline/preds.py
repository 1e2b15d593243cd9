"""Prediction files as stages write them: `<dir>/fold<k>/{oof,test}.csv` (an id column and one
probability column per class). No torch: ensemble, pseudolabel and submit read these fast."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.files import PipelineError, write_csv

EPS = 1e-7


def write_preds(folder: Path, name: str, ids, probs: np.ndarray, classes: list[str]) -> None:
    """`name`'s predictions in `folder`: one row per id, one probability column per class."""
    frame = pd.DataFrame(probs, columns=classes)
    frame.insert(0, "id", np.asarray(ids))
    write_csv(folder / f"{name}.csv", frame)


def read_preds(path: Path, classes: list[str]) -> pd.DataFrame:
    """Probabilities indexed by id, columns in `classes` order."""
    if not path.exists():
        raise PipelineError(f"{path}: missing; run `dvc repro` for the stage that writes it")
    frame = pd.read_csv(path, dtype={"id": str}, keep_default_na=False).set_index("id")
    missing = [c for c in classes if c not in frame.columns]
    if missing:
        raise PipelineError(f"{path}: no column for classes {missing[:5]}")
    return frame[classes]


def blend(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Row-aligned mean of probability frames that share ids (in any order)."""
    ids = frames[0].index
    for f in frames[1:]:
        if len(f) != len(ids) or not f.index.isin(ids).all():
            raise PipelineError("predictions to blend do not cover the same ids")
    return sum(f.loc[ids] for f in frames) / len(frames)


def fold_blend(dirs: list[Path], fold: int, split: str, classes: list[str]) -> pd.DataFrame:
    """One fold's `split` predictions (oof or test) averaged over several model folders."""
    return blend([read_preds(d / f"fold{fold}" / f"{split}.csv", classes) for d in dirs])


def mean_probs(probs: list[np.ndarray], combine: str, task: str) -> np.ndarray:
    """Average probability arrays, or their logits (`combine: logits`) and map back."""
    if combine == "probs" or len(probs) == 1:
        return np.mean(probs, 0)
    p = np.clip(np.stack(probs), EPS, 1 - EPS)
    if task == "multi_label":
        return 1 / (1 + np.exp(-np.log(p / (1 - p)).mean(0)))
    z = np.log(p).mean(0)  # log-softmax differs from the logits by a constant per row
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)

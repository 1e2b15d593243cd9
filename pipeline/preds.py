"""Prediction files as stages write them: `<dir>/fold<k>/{oof,test}.csv` (an id column and one
probability column per class). No torch: ensemble, pseudolabel and submit read these fast."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.files import PipelineError


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

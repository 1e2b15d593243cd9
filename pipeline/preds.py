"""Prediction files as stages write them: `NAME.npy` (float32, one row per id, one column per
class, e.g. preds/<model>/fold<k>/oof.npy) and `NAME.json` beside it ({"classes": [...], "ids":
[...]}: what each column and row is). Binary, so that no stage parses or prints floats (a 100k x
1,000 test set is 400 MB as float32, about three times that as CSV text), and a reader maps the
file instead of loading it (np.load's mmap_mode). In Python: `read_preds(folder, "oof", classes)`
gives the pandas frame. No torch: ensemble, pseudolabel and submit read these fast."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.files import PipelineError, atomic_path, read_json, write_json
from pipeline.metrics import LOGIT_EPS


def pred_files(folder: Path, name: str) -> tuple[Path, Path]:
    """The array and its ids/classes file."""
    return folder / f"{name}.npy", folder / f"{name}.json"


def has_preds(folder: Path, name: str) -> bool:
    return all(f.exists() for f in pred_files(folder, name))


def write_preds(folder: Path, name: str, ids, probs: np.ndarray, classes: list[str]) -> None:
    """`name`'s predictions in `folder`: one row per id, one probability column per class."""
    array, meta = pred_files(folder, name)
    probs = np.asarray(probs, dtype=np.float32)
    ids = [str(i) for i in ids]
    if probs.shape != (len(ids), len(classes)):
        shape = (len(ids), len(classes))
        raise ValueError(f"{array}: probabilities of shape {probs.shape}, ids x classes {shape}")
    with atomic_path(array) as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(probs))
    write_json(meta, {"classes": list(classes), "ids": ids})


def read_probs(folder: Path, name: str, classes: list[str]) -> tuple[pd.Index, np.ndarray]:
    """(ids, probabilities mapped read-only from disk, columns in `classes` order)."""
    array, meta = pred_files(folder, name)
    if not has_preds(folder, name):
        raise PipelineError(f"{array}: missing; run `dvc repro` for the stage that writes it")
    info = read_json(meta)
    probs = np.load(array, mmap_mode="r")
    if probs.ndim != 2 or probs.shape != (len(info["ids"]), len(info["classes"])):
        raise PipelineError(f"{array}: shape {probs.shape} does not match {meta}")
    if info["classes"] == list(classes):
        return pd.Index(info["ids"], dtype=str, name="id"), probs
    missing = [c for c in classes if c not in info["classes"]]
    if missing:
        raise PipelineError(f"{array}: no column for classes {missing[:5]}")
    extra = [c for c in info["classes"] if c not in classes]
    if extra:  # dropping them would leave rows that no longer sum to 1
        raise PipelineError(
            f"{array}: columns for classes {extra[:5]} the competition does not have; "
            "run `dvc repro` for the stage that writes it"
        )
    where = [info["classes"].index(c) for c in classes]
    return pd.Index(info["ids"], dtype=str, name="id"), probs[:, where]


def read_preds(folder: Path, name: str, classes: list[str]) -> pd.DataFrame:
    """Probabilities indexed by id, columns in `classes` order."""
    ids, probs = read_probs(folder, name, classes)
    return pd.DataFrame(probs, index=ids, columns=list(classes), copy=False)


def mean_preds(
    files: list[tuple[Path, str]], classes: list[str], ids: pd.Index | None = None
) -> tuple[pd.Index, np.ndarray]:
    """(ids, the mean of the prediction files `(folder, name)` over the same ids), rows in `ids`
    order (by default the first file's): one float32 array held, each file mapped in turn."""
    total = None
    for folder, name in files:
        got, probs = read_probs(folder, name, classes)
        ids = got if ids is None else ids
        rows = got.get_indexer(ids) if got.is_unique else np.array([-1])
        if len(got) != len(ids) or (rows < 0).any():
            first = files[0][0] / files[0][1]
            raise PipelineError(
                f"{folder / name}.npy: its ids are not those of {first}.npy (each id once)"
            )
        part = probs if np.array_equal(rows, np.arange(len(rows))) else probs[rows]
        total = np.array(part, np.float32) if total is None else np.add(total, part, out=total)
    total /= len(files)
    return ids, total


def fold_blend(dirs: list[Path], fold: int, split: str, classes: list[str]) -> pd.DataFrame:
    """One fold's `split` predictions (oof or test) averaged over several model folders."""
    ids, probs = mean_preds([(d / f"fold{fold}", split) for d in dirs], classes)
    return pd.DataFrame(probs, index=ids, columns=list(classes), copy=False)


def mean_probs(probs: list[np.ndarray], combine: str, task: str) -> np.ndarray:
    """Average probability arrays, or their logits (`combine: logits`) and map back."""
    if combine == "probs" or len(probs) == 1:
        return np.mean(probs, 0)
    p = np.clip(np.stack(probs), LOGIT_EPS, 1 - LOGIT_EPS)
    if task == "multi_label":
        return 1 / (1 + np.exp(-np.log(p / (1 - p)).mean(0)))
    z = np.log(p).mean(0)  # log-softmax differs from the logits by a constant per row
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def weighted_mean(arrays: list[np.ndarray], w) -> np.ndarray:
    """The arrays weighted by `w` (summing to one), in float32: one array beside theirs (an
    array alone is its own). What the ensemble blends its members with, and the kernel too."""
    if len(arrays) == 1:
        return arrays[0]
    out = np.zeros_like(arrays[0])
    for wi, a in zip(w, arrays, strict=True):
        out += np.float32(wi) * a
    return out


def blend_tta(outs: dict[str, np.ndarray], beta: float, combine: str, task: str) -> np.ndarray:
    """beta * plain + (1 - beta) * the mean over every other view (plain alone without views)."""
    views = [a for v, a in outs.items() if v != "plain"]
    if not views:
        return outs["plain"]
    return beta * outs["plain"] + (1 - beta) * mean_probs(views, combine, task)


def read_thresholds(path: Path, classes: list[str]) -> np.ndarray | None:
    """The blend's per-class thresholds (None: not multi-label), one for every class."""
    if not path.exists():
        raise PipelineError(f"{path}: missing; run `dvc repro ensemble` first")
    tuned = read_json(path).get("thresholds")
    if tuned is None:
        return None
    missing = [c for c in classes if c not in tuned]
    if missing:
        stage = "ensemble_final" if path.parent.name == "final" else "ensemble"
        raise PipelineError(
            f"{path}: no threshold for class {missing[0]!r} ({len(missing)} of {len(classes)} "
            f"classes missing): it was tuned for other classes than data/prepared/meta.json "
            f"lists; rerun `dvc repro {stage}`"
        )
    return np.array([tuned[c] for c in classes])

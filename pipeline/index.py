"""The canonical index written by `prepare` and the fold table: light to import (no torch), so
that folds, ensemble and submit start fast.

Index on disk (data/prepared/): train.csv (id, path, label), test.csv (id, path), meta.json
(classes, task, submission shape), sample_submission.csv, and with `prepare.cache_size` set
train_images.npy / test_images.npy: uint8 arrays (N, S, S, 3) in index row order, each image
made square as `prepare.resize` says (meta.json "resize": squish, crop or pad).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import cv2
import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from pipeline.files import PipelineError, read_json

PREPARED = Path("data/prepared")
EXTRA = Path("data/extra")  # pseudo.extra's images: test.csv (id, path), meta.json, test_images.npy
FOLDS = Path("folds/folds.csv")
ORIENTATION = 0x0112  # the EXIF tag: 1 upright, 6 turned 90 degrees (a phone held upright), ...


@dataclass(frozen=True)
class Index:
    train: pd.DataFrame  # id, path, label
    test: pd.DataFrame  # id, path
    meta: dict[str, Any]
    root: Path

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    def images(self, split: str) -> np.ndarray | None:
        """The resize-once cache for a split (memory-mapped), or None when prepare made none."""
        path = self.root / f"{split}_images.npy"
        return np.load(path, mmap_mode="r") if path.exists() else None


def read_index(root: str | Path = PREPARED) -> Index:
    root = Path(root)
    for name in ("train.csv", "test.csv", "meta.json"):
        if not (root / name).exists():
            raise PipelineError(f"{root / name}: missing; run `dvc repro prepare` first")
    str_cols = {"id": str, "label": str, "path": str}
    train = pd.read_csv(root / "train.csv", dtype=str_cols, keep_default_na=False)
    test = pd.read_csv(root / "test.csv", dtype=str_cols, keep_default_na=False)
    return Index(train=train, test=test, meta=read_json(root / "meta.json"), root=root)


def read_pool(extra: str | None = "", root: str | Path = EXTRA) -> Index:
    """pseudo.extra's unlabeled images (the `extra` stage's output) as an index whose test split
    they are, so that the test set's dataset, prediction and cache code reads them unchanged.
    Empty, and nothing read, when `extra` (pseudo.extra) is None."""
    root = Path(root)
    if extra is None:
        return Index(
            pd.DataFrame(columns=["id", "path"]), pd.DataFrame(columns=["id", "path"]), {}, root
        )
    for name in ("test.csv", "meta.json"):
        if not (root / name).exists():
            raise PipelineError(f"{root / name}: missing; run `dvc repro extra` first")
    pool = pd.read_csv(root / "test.csv", dtype={"id": str, "path": str}, keep_default_na=False)
    return Index(train=pool.iloc[:0], test=pool, meta=read_json(root / "meta.json"), root=root)


def read_folds(path: Path = FOLDS) -> pd.DataFrame:
    if not path.exists():
        raise PipelineError(f"{path}: missing; run `dvc repro folds` first")
    return pd.read_csv(path, dtype={"id": str, "label": str}, keep_default_na=False)


def fold_rows(index: Index, folds: pd.DataFrame, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions in index.train of fold `fold`'s training rows and validation rows."""
    by_id = folds.set_index("id")["fold"]
    if not by_id.index.is_unique:
        raise PipelineError("folds/folds.csv: ids repeat; rerun `dvc repro prepare folds`")
    missing = set(index.train["id"]) - set(by_id.index)
    if missing:
        raise PipelineError(
            f"folds/folds.csv: {len(missing)} training ids have no fold (e.g. "
            f"{sorted(missing)[:3]}); rerun `dvc repro folds`"
        )
    f = by_id.loc[index.train["id"]].to_numpy()
    return np.flatnonzero(f != fold), np.flatnonzero(f == fold)


def load_image(path: str | Path | BinaryIO) -> np.ndarray:
    """Decode any PIL-readable file to an RGB uint8 array (H, W, 3), upright: a phone photo's
    EXIF orientation is applied as every viewer applies it. 16-bit, 32-bit integer and float
    grayscale images are scaled to 8 bits (to_uint8): PIL's convert would clip them."""
    with Image.open(path) as opened:
        im = upright(opened)
        if im.mode.startswith(("I", "F")):
            gray = to_uint8(np.asarray(im), im.mode)
            return np.repeat(gray[..., None], 3, axis=2)
        return np.asarray(im.convert("RGB"))


def upright(im: Image.Image) -> Image.Image:
    """The image turned as its EXIF (or TIFF) Orientation tag says; itself when there is none."""
    if im.getexif().get(ORIENTATION, 1) in (0, 1):
        return im
    return ImageOps.exif_transpose(im)


def to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """16-bit modes (I;16…) and 32-bit integers within 0-65535: v / 257. Floats (F): [0, 1] x 255,
    [0, 255] as they are, [0, 65535] / 257. Anything else: stretched from its minimum to maximum."""
    a = a.astype(np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if mode == "F" and lo >= 0 and hi <= 1:
        a = a * 255
    elif mode == "F" and lo >= 0 and hi <= 255:
        pass
    elif lo >= 0 and hi <= 65535:
        a = a / 257
    else:
        a = (a - lo) * (255 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


RESIZE_MODES = ("squish", "crop", "pad")  # prepare.resize: how a photo that is not square fits
PAD_VALUE = 0  # letterbox bars (prepare.resize: pad): black, as rotations' and cutout's fill


def square(img: np.ndarray, mode: str) -> np.ndarray:
    """The image made square without resampling: squish leaves it (the resize squashes it), crop
    keeps its centre square (the long side's ends are lost), pad centres it on PAD_VALUE bars
    (nothing lost; the odd pixel of an uneven margin goes to the bottom or right)."""
    h, w = img.shape[:2]
    if mode == "squish" or h == w:
        return img
    if mode == "crop":
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        return img[top : top + s, left : left + s]
    s = max(h, w)
    out = np.full((s, s, *img.shape[2:]), PAD_VALUE, dtype=img.dtype)
    top, left = (s - h) // 2, (s - w) // 2
    out[top : top + h, left : left + w] = img
    return out


def resize(img: np.ndarray, size: int, mode: str = "squish") -> np.ndarray:
    """A size x size image: made square by `mode` (prepare.resize), then resampled."""
    img = square(img, mode)
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img
    # area averaging when shrinking avoids aliasing; cubic when enlarging keeps edges smooth
    interp = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_CUBIC
    return cv2.resize(img, (size, size), interpolation=interp)


def encode_labels(labels: pd.Series, classes: list[str], task: str) -> np.ndarray:
    """Class ids (N,) for single-label; multi-hot float32 (N, C) for space-separated tags."""
    lookup = {c: k for k, c in enumerate(classes)}
    if task == "multi_label":
        out = np.zeros((len(labels), len(classes)), dtype=np.float32)
        for i, tags in enumerate(labels):
            out[i, [lookup[t] for t in str(tags).split()]] = 1.0
        return out
    return labels.map(lookup).to_numpy(dtype=np.int64, copy=True)  # writable for torch


def tag_set(labels: pd.Series) -> list[str]:
    """Every tag of space-separated multi-label labels, sorted."""
    return sorted({t for tags in labels for t in str(tags).split()})


def label_counts(labels: pd.Series, task: str) -> pd.Series:
    """Images per class, or per tag for multi-label (an image counts for each of its tags)."""
    return (labels.str.split().explode() if task == "multi_label" else labels).value_counts()

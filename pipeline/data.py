"""The canonical index written by `prepare`, image decoding, the resize-once cache, the dataset and
the albumentations transforms.

Index on disk (data/prepared/): train.csv (id, path, label), test.csv (id, path), meta.json
(classes, task, submission shape), sample_submission.csv, and with `prepare.cache_size` set
train_images.npy / test_images.npy: uint8 arrays (N, S, S, 3) in index row order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import torch
from albumentations.pytorch import ToTensorV2
from PIL import Image
from sklearn.utils.class_weight import compute_class_weight

from pipeline.files import PipelineError, read_json
from pipeline.params import Augment

PREPARED = Path("data/prepared")
FOLDS = Path("folds/folds.csv")


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


def read_folds(path: Path = FOLDS) -> pd.DataFrame:
    if not path.exists():
        raise PipelineError(f"{path}: missing; run `dvc repro folds` first")
    return pd.read_csv(path, dtype={"id": str, "label": str})


def fold_rows(index: Index, folds: pd.DataFrame, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions in index.train of fold `fold`'s training rows and validation rows."""
    by_id = folds.set_index("id")["fold"]
    missing = set(index.train["id"]) - set(by_id.index)
    if missing:
        raise PipelineError(
            f"folds/folds.csv: {len(missing)} training ids have no fold (e.g. "
            f"{sorted(missing)[:3]}); rerun `dvc repro folds`"
        )
    f = by_id.loc[index.train["id"]].to_numpy()
    return np.flatnonzero(f != fold), np.flatnonzero(f == fold)


def load_image(path: str | Path) -> np.ndarray:
    """Decode any PIL-readable file to an RGB uint8 array (H, W, 3)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def resize(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img
    # area averaging when shrinking avoids aliasing; cubic when enlarging keeps edges smooth
    interp = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_CUBIC
    return cv2.resize(img, (size, size), interpolation=interp)


class ImageDataset(torch.utils.data.Dataset):
    """Rows of the index as (image tensor, label); images come from the cache or from files."""

    def __init__(
        self,
        transform: A.Compose,
        size: int,
        labels: np.ndarray | None = None,
        cache: np.ndarray | None = None,
        paths: list[str] | None = None,
        rows: np.ndarray | None = None,  # with cache: its rows to use (memory-mapped, not copied)
    ) -> None:
        if (cache is None) == (paths is None):
            raise ValueError("give exactly one of cache= or paths=")
        self.cache, self.paths, self.labels = cache, paths, labels
        if cache is not None:
            self.rows = np.arange(len(cache)) if rows is None else np.asarray(rows)
        self.transform, self.size = transform, size

    def __len__(self) -> int:
        return len(self.rows) if self.cache is not None else len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, np.ndarray | int]:
        img = self.cache[self.rows[i]] if self.cache is not None else load_image(self.paths[i])
        x = self.transform(image=resize(np.asarray(img), self.size))["image"]
        return x, (self.labels[i] if self.labels is not None else -1)


def encode_labels(labels: pd.Series, classes: list[str], task: str) -> np.ndarray:
    """Class ids (N,) for single-label; multi-hot float32 (N, C) for space-separated tags."""
    lookup = {c: k for k, c in enumerate(classes)}
    if task == "multi_label":
        out = np.zeros((len(labels), len(classes)), dtype=np.float32)
        for i, tags in enumerate(labels):
            out[i, [lookup[t] for t in str(tags).split()]] = 1.0
        return out
    return labels.map(lookup).to_numpy(dtype=np.int64, copy=True)  # writable for torch


def class_weights(targets: np.ndarray, n_classes: int, kind: str, beta: float) -> np.ndarray | None:
    """Loss weights per class from the training rows' targets (ids or multi-hot).

    balanced: n / (C * count) — scikit-learn's compute_class_weight; effective: the effective
    number of samples (1 - beta) / (1 - beta**count) (Cui et al. 2019), scaled to mean 1.
    For multi-label targets the weights are BCE's pos_weight (negatives / positives per class).
    """
    if kind == "none":
        return None
    if targets.ndim == 2:
        pos = targets.sum(0).clip(min=1)
        return ((len(targets) - pos) / pos).astype(np.float32)
    counts = np.bincount(targets, minlength=n_classes)
    if (counts == 0).any():
        raise PipelineError(
            f"class weights: classes {np.flatnonzero(counts == 0).tolist()} have no rows"
        )
    if kind == "balanced":
        return compute_class_weight("balanced", classes=np.arange(n_classes), y=targets)
    w = (1 - beta) / (1 - beta**counts)
    return w * n_classes / w.sum()


def balanced_sampler(targets: np.ndarray, seed: int) -> torch.utils.data.WeightedRandomSampler:
    """Draws rows so that every class is equally likely (single-label)."""
    counts = np.bincount(targets)
    weights = torch.as_tensor(1.0 / counts[targets], dtype=torch.double)
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.WeightedRandomSampler(weights, len(targets), generator=g)


def split_dataset(
    index: Index, split: str, rows: np.ndarray, transform: A.Compose, size: int
) -> ImageDataset:
    """Dataset over `rows` (positions in index.<split>); train rows carry encoded labels."""
    frame = index.train if split == "train" else index.test
    frame = frame.iloc[rows]
    labels = None
    if split == "train":
        labels = encode_labels(
            frame["label"], index.classes, index.meta.get("task", "single_label")
        )
    cache = index.images(split)
    if cache is not None:
        return ImageDataset(transform, size, labels, cache=cache, rows=rows)
    return ImageDataset(transform, size, labels, paths=frame["path"].tolist())


def build_transforms(
    split: str,
    strength: float,
    aug: Augment | None,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> A.Compose:
    """One pipeline for every split; `strength` scales every random transform (0 = none).

    `split` is "train" (random augmentation) or anything else (normalise only).
    """
    tail = [A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()]
    if split != "train" or strength <= 0 or aug is None:
        return A.Compose(tail)
    s = strength
    ops: list[A.BasicTransform] = []
    if aug.hflip:
        ops.append(A.HorizontalFlip(p=0.5))
    if aug.vflip:
        ops.append(A.VerticalFlip(p=0.5))
    if aug.rotate or aug.shift or aug.scale:
        ops.append(
            A.Affine(
                rotate=(-aug.rotate * s, aug.rotate * s),
                translate_percent=(-aug.shift * s, aug.shift * s),
                scale=(1 - aug.scale * s, 1 + aug.scale * s),
                border_mode=cv2.BORDER_CONSTANT,
                p=min(1.0, 0.5 + 0.5 * s),
            )
        )
    if aug.brightness:
        b = aug.brightness * s
        ops.append(A.RandomBrightnessContrast(brightness_limit=b, contrast_limit=b, p=0.5))
    return A.Compose(ops + tail)

"""Tiny generated competitions in the layouts real Kaggle competitions ship.

Each writer builds a folder the way `kaggle competitions download` leaves it (after extraction)
and returns the competition overrides a run of it needs (its metric). Images are small and carry
their class in one colour channel, so a one-epoch model has something to learn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from pipeline.params import Competition
from tests.conftest import ROOT

SIZE = 12  # px


def competition(**over) -> Competition:
    """params.yaml's competition section with `over` applied."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())["competition"]
    return Competition(**{**raw, **over})


def image(k: int, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    img = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
    img[..., k % 3] += 150
    img[: size // 2, :, (k // 3) % 3] += 60  # a second cue for classes beyond three
    return img


def save(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def aptos(root: Path, n_train: int = 25, n_test: int = 8, seed: int = 0) -> dict:
    """aptos2019: train.csv (id_code, diagnosis 0-4), train_images/ + test_images/ of .png."""
    rng = np.random.default_rng(seed)
    ids = [f"{rng.integers(16**11):011x}" for _ in range(n_train + n_test)]
    grades = [i % 5 for i in range(n_train)]
    for i, g in zip(ids, grades, strict=False):
        save(root / "train_images" / f"{i}.png", image(g, rng))
    for k, i in enumerate(ids[n_train:]):
        save(root / "test_images" / f"{i}.png", image(k, rng))
    pd.DataFrame({"id_code": ids[:n_train], "diagnosis": grades}).to_csv(
        root / "train.csv", index=False
    )
    test_ids = [ids[n_train + j] for j in rng.permutation(n_test)]
    pd.DataFrame({"id_code": test_ids, "diagnosis": 0}).to_csv(
        root / "sample_submission.csv", index=False
    )
    return {"metric": "qwk"}


BREEDS = ["boston_bull", "affenpinscher", "dingo", "beagle"]


def dog_breed(root: Path, n_train: int = 16, n_test: int = 6, seed: int = 0) -> dict:
    """dog-breed-identification: labels.csv (id, breed), train/<id>.jpg, a probability column
    per breed in sample_submission (in the sample's own column order)."""
    rng = np.random.default_rng(seed)
    ids = [f"{rng.integers(16**12):012x}" for _ in range(n_train + n_test)]
    breeds = [BREEDS[i % len(BREEDS)] for i in range(n_train)]
    for i, b in zip(ids, breeds, strict=False):
        save(root / "train" / f"{i}.jpg", image(BREEDS.index(b), rng))
    for k, i in enumerate(ids[n_train:]):
        save(root / "test" / f"{i}.jpg", image(k, rng))
    pd.DataFrame({"id": ids[:n_train], "breed": breeds}).to_csv(root / "labels.csv", index=False)
    sample = pd.DataFrame({"id": ids[n_train:]})
    for b in BREEDS:  # deliberately not sorted: the submission must follow the sample
        sample[b] = 1 / len(BREEDS)
    sample.to_csv(root / "sample_submission.csv", index=False)
    return {"metric": "log_loss"}


def histopathologic(root: Path, n_train: int = 12, n_test: int = 4, seed: int = 0) -> dict:
    """histopathologic-cancer-detection: train_labels.csv (id, label 0/1), train/<id>.tif,
    sample label 0 (integers) though the leaderboard scores P(label = 1) by ROC AUC."""
    rng = np.random.default_rng(seed)
    ids = [f"{rng.integers(16**15):015x}" for _ in range(n_train + n_test)]
    labels = [i % 2 for i in range(n_train)]
    for i, lab in zip(ids, labels, strict=False):
        save(root / "train" / f"{i}.tif", image(lab, rng))
    for i in ids[n_train:]:
        save(root / "test" / f"{i}.tif", image(0, rng))
    pd.DataFrame({"id": ids[:n_train], "label": labels}).to_csv(
        root / "train_labels.csv", index=False
    )
    pd.DataFrame({"id": ids[n_train:], "label": 0}).to_csv(
        root / "sample_submission.csv", index=False
    )
    return {"metric": "roc_auc"}


def cifar10(root: Path, n_train: int = 12, n_test: int = 4, seed: int = 0) -> dict:
    """cifar-10: trainLabels.csv (id 1..N, label), train/<id>.png, test/<id>.png."""
    rng = np.random.default_rng(seed)
    names = ["airplane", "automobile", "bird"]
    labels = [names[i % 3] for i in range(n_train)]
    for i, lab in enumerate(labels, start=1):
        save(root / "train" / f"{i}.png", image(names.index(lab), rng))
    for i in range(1, n_test + 1):
        save(root / "test" / f"{i}.png", image(i, rng))
    pd.DataFrame({"id": range(1, n_train + 1), "label": labels}).to_csv(
        root / "trainLabels.csv", index=False
    )
    pd.DataFrame({"id": range(1, n_test + 1), "label": "cat"}).to_csv(
        root / "sample_submission.csv", index=False
    )
    return {"metric": "accuracy"}


SPECIES = ["Black-grass", "Charlock", "Common Chickweed"]


def plant_seedlings(root: Path, per_class: int = 6, n_test: int = 6, seed: int = 0) -> dict:
    """plant-seedlings-classification: train/<species>/<hash>.png, test/<hash>.png, sample
    `file,species` whose ids are file names with their suffix."""
    rng = np.random.default_rng(seed)
    for k, sp in enumerate(SPECIES):
        for _ in range(per_class):
            save(root / "train" / sp / f"{rng.integers(16**9):09x}.png", image(k, rng))
    files = [f"{rng.integers(16**9):09x}.png" for _ in range(n_test)]
    for k, f in enumerate(files):
        save(root / "test" / f, image(k, rng))
    pd.DataFrame({"file": files[::-1], "species": SPECIES[0]}).to_csv(
        root / "sample_submission.csv", index=False
    )
    return {"metric": "f1_micro"}


def dogs_vs_cats(root: Path, per_class: int = 8, n_test: int = 6, seed: int = 0) -> dict:
    """dogs-vs-cats-redux: train/cat.<n>.jpg and train/dog.<n>.jpg, test/<n>.jpg (n from 1),
    sample `id,label` with 0.5: the label is P(dog), scored by log loss."""
    rng = np.random.default_rng(seed)
    for k, animal in enumerate(["cat", "dog"]):
        for n in range(per_class):
            save(root / "train" / f"{animal}.{n}.jpg", image(k, rng))
    for n in range(1, n_test + 1):
        save(root / "test" / f"{n}.jpg", image(n, rng))
    pd.DataFrame({"id": range(1, n_test + 1), "label": 0.5}).to_csv(
        root / "sample_submission.csv", index=False
    )
    return {"metric": "log_loss"}


def digit_recognizer(root: Path, n_train: int = 20, n_test: int = 6, seed: int = 0) -> dict:
    """digit-recognizer: train.csv (label, pixel0..pixel783 of 28 x 28 grayscale), test.csv of
    pixels, sample `ImageId,Label` with ImageId counting test rows from 1."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    cols = [f"pixel{i}" for i in range(28 * 28)]
    labels = [i % 4 for i in range(n_train)]

    def digits(ks: list[int]) -> np.ndarray:
        px = rng.integers(0, 60, (len(ks), 28, 28))
        for r, k in enumerate(ks):
            px[r, 7 * k : 7 * k + 7] += 190  # a bright band whose row says the digit
        return px.reshape(len(ks), -1)

    train = pd.DataFrame(digits(labels), columns=cols)
    train.insert(0, "label", labels)
    train.to_csv(root / "train.csv", index=False)
    pd.DataFrame(digits([i % 4 for i in range(n_test)]), columns=cols).to_csv(
        root / "test.csv", index=False
    )
    pd.DataFrame({"ImageId": range(1, n_test + 1), "Label": 0}).to_csv(
        root / "sample_submission.csv", index=False
    )
    return {"metric": "accuracy"}


TAGS = ["agriculture", "clear", "cloudy", "primary", "water"]


def planet_tags(n: int, rng: np.random.Generator) -> list[str]:
    """Tag sets with a weather tag each and a few land tags: more sets than tags."""
    out = []
    for i in range(n):
        tags = {["clear", "cloudy"][i % 2]}
        tags |= {t for t in ("agriculture", "primary", "water") if rng.random() < 0.5}
        tags.add(["agriculture", "primary", "water"][i % 3])
        out.append(" ".join(sorted(tags)))
    return out


def planet(root: Path, n_train: int = 24, n_test: int = 6, seed: int = 0) -> dict:
    """planet-understanding-the-amazon-from-space: train_v2.csv (image_name, space-separated
    tags), train-jpg/<name>.jpg, test-jpg/test_<n>.jpg, sample `image_name,tags`."""
    rng = np.random.default_rng(seed)
    tags = planet_tags(n_train, rng)
    names = [f"train_{i}" for i in range(n_train)]
    for name, t in zip(names, tags, strict=True):
        save(root / "train-jpg" / f"{name}.jpg", image(len(t.split()), rng))
    test = [f"test_{i}" for i in range(n_test)]
    for k, name in enumerate(test):
        save(root / "test-jpg" / f"{name}.jpg", image(k, rng))
    pd.DataFrame({"image_name": names, "tags": tags}).to_csv(root / "train_v2.csv", index=False)
    pd.DataFrame({"image_name": test, "tags": "primary clear"}).to_csv(
        root / "sample_submission.csv", index=False
    )
    return {"metric": "f2_samples"}


# layout name -> the writer of its representative competition
LAYOUTS = {
    "csv": aptos,
    "class_folders": plant_seedlings,
    "filename_labels": dogs_vs_cats,
    "pixels_csv": digit_recognizer,
    "multi_label": planet,
}

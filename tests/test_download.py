"""The embedded demo competition: Kaggle's layout, skewed, deterministic, solution kept apart."""

import filecmp

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.stages.download import SKEWED, write_demo


def test_demo_layout_and_skew(tmp_path):
    write_demo(tmp_path, seed=3)
    train = pd.read_csv(tmp_path / "train.csv", dtype={"id": str})
    sample = pd.read_csv(tmp_path / "sample_submission.csv", dtype={"id": str})
    solution = pd.read_csv(tmp_path / "solution.csv", dtype={"id": str})
    assert list(train.columns) == ["id", "label"] == list(sample.columns)
    assert len(train) + len(sample) < 1797  # two classes lost two thirds of their train images
    assert all((tmp_path / "train" / f"{i}.png").exists() for i in train["id"])
    assert all((tmp_path / "test" / f"{i}.png").exists() for i in sample["id"])
    assert not set(train["id"]) & set(sample["id"])
    assert solution["id"].tolist() == sample["id"].tolist()
    counts = train["label"].value_counts()
    for cls in SKEWED:
        assert counts[cls] < 0.5 * counts.drop(list(SKEWED)).median()
    with Image.open(tmp_path / "train" / f"{train['id'][0]}.png") as im:
        assert im.size == (8, 8) and np.asarray(im).max() > 100


def test_demo_is_deterministic_from_seed(tmp_path):
    write_demo(tmp_path / "a", seed=5)
    write_demo(tmp_path / "b", seed=5)
    write_demo(tmp_path / "c", seed=6)
    for name in ("train.csv", "sample_submission.csv", "solution.csv"):
        assert filecmp.cmp(tmp_path / "a" / name, tmp_path / "b" / name, shallow=False)
    assert not filecmp.cmp(
        tmp_path / "a" / "train.csv", tmp_path / "c" / "train.csv", shallow=False
    )

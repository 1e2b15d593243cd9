"""folds: every id validated exactly once, class and tag ratios kept, groups kept whole, seeded."""

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_digits

from pipeline.files import PipelineError
from pipeline.stages.folds import make_folds


@pytest.fixture
def train() -> pd.DataFrame:
    y = load_digits().target
    keep = np.flatnonzero((y != 3) | (np.arange(len(y)) % 3 == 0))  # class 3 at a third: skewed
    return pd.DataFrame({"id": [f"i{n}" for n in keep], "label": y[keep].astype(str)})


def test_each_id_in_exactly_one_validation_fold(train):
    folds = make_folds(train, 5, seed=1, task="single_label")
    assert folds["id"].tolist() == train["id"].tolist()
    assert folds["id"].is_unique
    assert set(folds["fold"]) == set(range(5))


def test_class_ratios_kept_in_every_fold(train):
    folds = make_folds(train, 5, seed=1, task="single_label")
    overall = folds["label"].value_counts(normalize=True)
    for _, part in folds.groupby("fold"):
        ratios = part["label"].value_counts(normalize=True).reindex(overall.index, fill_value=0)
        assert np.abs(ratios - overall).max() < 0.02


def test_same_seed_same_folds_other_seed_other_folds(train):
    a, b = (
        make_folds(train, 5, seed=7, task="single_label"),
        make_folds(train, 5, seed=7, task="single_label"),
    )
    assert a.equals(b)
    assert not a.equals(make_folds(train, 5, seed=8, task="single_label"))


def test_class_smaller_than_fold_count_is_named():
    train = pd.DataFrame({"id": list("abcdefg"), "label": ["x"] * 6 + ["rare"]})
    with pytest.raises(PipelineError, match="class 'rare' has 1 images"):
        make_folds(train, 3, seed=0, task="single_label")


TAGS = ["agriculture", "clear", "cloudy", "haze", "primary", "road", "water", "blooming"]


@pytest.fixture
def tagged() -> pd.DataFrame:
    """600 planet-like rows: a weather tag each, land tags of very different frequencies."""
    rng = np.random.default_rng(3)
    freq = {"agriculture": 0.3, "primary": 0.9, "road": 0.2, "water": 0.15, "blooming": 0.04}
    labels = []
    for _ in range(600):
        tags = {rng.choice(["clear", "cloudy", "haze"], p=[0.7, 0.2, 0.1])}
        tags |= {t for t, f in freq.items() if rng.random() < f}
        labels.append(" ".join(sorted(tags)))
    return pd.DataFrame({"id": [f"train_{i}" for i in range(600)], "label": labels})


def tag_frequency(frame: pd.DataFrame) -> pd.Series:
    return pd.Series(
        {t: frame["label"].str.split().apply(lambda x, t=t: t in x).mean() for t in TAGS}
    )


def test_multi_label_folds_keep_every_tag_frequency(tagged):
    folds = make_folds(tagged, 5, seed=1, task="multi_label")
    assert sorted(folds["id"]) == sorted(tagged["id"]) and set(folds["fold"]) == set(range(5))
    overall = tag_frequency(folds)
    for _, part in folds.groupby("fold"):
        assert (tag_frequency(part) - overall).abs().max() < 0.02  # ~2 rows of 120
    assert folds.equals(make_folds(tagged, 5, seed=1, task="multi_label"))
    assert not folds.equals(make_folds(tagged, 5, seed=2, task="multi_label"))


def test_rare_tag_is_named(tagged):
    tagged.loc[0, "label"] += " slash_burn"
    with pytest.raises(PipelineError, match="tag 'slash_burn' has 1 images"):
        make_folds(tagged, 5, seed=0, task="multi_label")


@pytest.mark.parametrize("task", ["single_label", "multi_label"])
def test_groups_never_straddle_folds(train, tagged, task):
    frame = train if task == "single_label" else tagged
    frame = frame.assign(group=[f"patient{i // 4}" for i in range(len(frame))])
    folds = make_folds(frame, 5, seed=1, task=task).assign(group=frame["group"])
    assert (folds.groupby("group")["fold"].nunique() == 1).all()
    assert set(folds["fold"]) == set(range(5))
    assert folds.equals(make_folds(frame, 5, seed=1, task=task).assign(group=frame["group"]))
    other = make_folds(frame, 5, seed=2, task=task)
    assert not folds["fold"].equals(other["fold"])


def test_grouped_single_label_still_stratified(train):
    frame = train.assign(group=[f"patient{i // 3}" for i in range(len(train))])
    folds = make_folds(frame, 5, seed=1, task="single_label")
    overall = folds["label"].value_counts(normalize=True)
    for _, part in folds.groupby("fold"):
        ratios = part["label"].value_counts(normalize=True).reindex(overall.index, fill_value=0)
        assert np.abs(ratios - overall).max() < 0.05

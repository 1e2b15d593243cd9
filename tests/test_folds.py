"""folds: every id validated exactly once, class ratios kept, seeded and repeatable."""

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
    folds = make_folds(train, 5, seed=1)
    assert folds["id"].tolist() == train["id"].tolist()
    assert folds["id"].is_unique
    assert set(folds["fold"]) == set(range(5))


def test_class_ratios_kept_in_every_fold(train):
    folds = make_folds(train, 5, seed=1)
    overall = folds["label"].value_counts(normalize=True)
    for _, part in folds.groupby("fold"):
        ratios = part["label"].value_counts(normalize=True).reindex(overall.index, fill_value=0)
        assert np.abs(ratios - overall).max() < 0.02


def test_same_seed_same_folds_other_seed_other_folds(train):
    a, b = make_folds(train, 5, seed=7), make_folds(train, 5, seed=7)
    assert a.equals(b)
    assert not a.equals(make_folds(train, 5, seed=8))


def test_class_smaller_than_fold_count_is_named():
    train = pd.DataFrame({"id": list("abcdefg"), "label": ["x"] * 6 + ["rare"]})
    with pytest.raises(PipelineError, match="class 'rare' has 1 images"):
        make_folds(train, 3, seed=0)

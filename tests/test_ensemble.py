"""The ensemble: equal or fitted weights, snapshot sets, and a CV that never peeks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline import metrics
from pipeline.index import encode_labels, read_index
from pipeline.stages.ensemble import Member, evaluate, fit_weights


def folds_of(index) -> np.ndarray:
    folds = pd.read_csv("folds/folds.csv", dtype={"id": str}).set_index("id")["fold"]
    return folds.loc[index.train["id"]].to_numpy()


def targets_and_folds(index):
    return encode_labels(index.train["label"], index.classes, "single_label"), folds_of(index)


def member(index, probs: np.ndarray, fold: np.ndarray) -> Member:
    test = np.full((len(index.test), len(index.classes)), 1 / len(index.classes), np.float32)
    return Member(probs.astype(np.float32), test, fold)


def good_or_noise(y: np.ndarray, good_rows: np.ndarray, seed: int) -> np.ndarray:
    """Confident and right on `good_rows`, random elsewhere."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(3), len(y))
    p[good_rows] = np.eye(3)[y[good_rows]] * 0.9 + 0.1 / 3
    return p


def test_fitted_weights_are_a_convex_mix_that_prefers_the_better_member():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    good = np.eye(3)[y] * 0.7 + 0.1
    noise = rng.dirichlet(np.ones(3), 200)
    w = fit_weights(np.stack([noise, good, noise]), y)
    assert (w >= 0).all() and w.sum() == pytest.approx(1.0)
    assert w[1] > 0.9


def test_fitted_weights_for_a_fold_never_see_its_rows(workdir):
    """A leaky fit would pick A for fold 0 and B for fold 1 and score perfectly; fold k's weights
    come from the other fold, so the honest CV picks the member that is noise on fold k."""
    index = read_index()
    y, fold = targets_and_folds(index)
    a = member(index, good_or_noise(y, fold == 0, 1), fold)
    b = member(index, good_or_noise(y, fold == 1, 2), fold)
    honest = evaluate(index, "log_loss", {"a": a, "b": b}, "fit")
    alone = [evaluate(index, "log_loss", {n: m}, "equal").report["log_loss"] for n, m in
             (("a", a), ("b", b))]  # fmt: skip
    equal = evaluate(index, "log_loss", {"a": a, "b": b}, "equal").report["log_loss"]
    assert honest.report["log_loss"] > equal  # fitted on the other fold: the wrong member here
    assert min(alone) > equal  # averaging two half-good members helps
    assert sum(honest.weights) == pytest.approx(1.0)  # the test set's: fitted on all rows
    oracle = np.where((fold == 0)[:, None], a.oof, b.oof)
    assert metrics.value("log_loss", oracle, y) < honest.report["log_loss"]


def test_equal_weights_are_the_plain_mean(workdir):
    index = read_index()
    y, fold = targets_and_folds(index)
    a = member(index, good_or_noise(y, fold == 0, 1), fold)
    b = member(index, good_or_noise(y, fold == 1, 2), fold)
    out = evaluate(index, "accuracy", {"a": a, "b": b}, "equal")
    np.testing.assert_allclose(out.oof, (a.oof + b.oof) / 2, rtol=1e-6)
    assert out.weights == [0.5, 0.5]


def test_multi_label_thresholds_of_a_fold_are_tuned_on_the_other_folds(workdir):
    index = read_index()
    tags = index.train["label"].map({"cat": "cat dog", "dog": "dog", "fox": "fox cat"})
    index.train["label"] = tags
    index.meta["task"] = "multi_label"
    y = encode_labels(tags, index.classes, "multi_label")
    fold = folds_of(index)
    rng = np.random.default_rng(3)
    probs = np.clip(y * 0.4 + rng.uniform(0, 0.6, y.shape), 0, 1)
    out = evaluate(index, "f2_samples", {"m": member(index, probs, fold)}, "equal")
    for k in (0, 1):
        want = metrics.tune_thresholds("f2_samples", probs[fold != k], y[fold != k])
        np.testing.assert_allclose(
            out.row_thresholds[fold == k], np.tile(want, ((fold == k).sum(), 1))
        )
    np.testing.assert_allclose(out.thresholds, metrics.tune_thresholds("f2_samples", probs, y))
    leaky = metrics.value("f2_samples", probs, y, out.thresholds)
    assert out.report["f2_samples"] == pytest.approx(
        metrics.value("f2_samples", probs, y, out.row_thresholds)
    )
    assert out.report["f2_samples"] <= leaky  # tuned elsewhere: never above the in-sample figure

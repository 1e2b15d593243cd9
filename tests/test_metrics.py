"""Metrics agree with scikit-learn's; tuned multi-label thresholds never lose to 0.5."""

import numpy as np
import pytest
from sklearn import metrics as sk

from pipeline import metrics
from pipeline.files import PipelineError

SEEDS = range(5)


def single(seed: int, n: int = 200, c: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(c), n)
    return probs, rng.integers(0, c, n)


def multi(seed: int, n: int = 200, c: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, c)) < 0.3).astype(np.float32)
    targets[np.arange(n), rng.integers(0, c, n)] = 1  # every image has a tag, as in planet
    probs = np.clip(0.6 * targets + 0.7 * rng.random((n, c)) - 0.2, 0, 1)
    return probs, targets


@pytest.mark.parametrize("seed", SEEDS)
def test_single_label_metrics_match_sklearn(seed):
    probs, y = single(seed)
    pred = probs.argmax(1)
    m = metrics.report(probs, y)
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(y, pred), abs=1e-6)
    assert m["log_loss"] == pytest.approx(sk.log_loss(y, probs, labels=range(4)), abs=1e-6)
    assert m["roc_auc"] == pytest.approx(
        sk.roc_auc_score(y, probs, multi_class="ovr", average="macro"), abs=1e-6
    )
    assert m["f1_micro"] == pytest.approx(sk.f1_score(y, pred, average="micro"), abs=1e-6)
    decoded = np.rint(probs @ np.arange(4)).astype(int)  # expected-value decoding
    assert m["qwk"] == pytest.approx(
        sk.cohen_kappa_score(y, decoded, weights="quadratic"), abs=1e-6
    )
    assert "f2_samples" not in m  # a multi-label metric does not apply


@pytest.mark.parametrize("seed", SEEDS)
def test_binary_auc_and_log_loss_match_sklearn(seed):
    probs, y = single(seed, c=2)
    assert metrics.value("roc_auc", probs, y) == pytest.approx(sk.roc_auc_score(y, probs[:, 1]))
    extreme = np.where(probs > 0.5, 1.0, 0.0)  # 0 and 1 only: clipping keeps the loss finite
    assert metrics.value("log_loss", extreme, y) == pytest.approx(
        sk.log_loss(y, np.clip(extreme, 1e-15, 1 - 1e-15)), rel=1e-6
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_multi_label_metrics_match_sklearn(seed):
    probs, y = multi(seed)
    pred = metrics.decide_tags(probs, 0.5)
    m = metrics.report(probs, y)
    assert m["f2_samples"] == pytest.approx(
        sk.fbeta_score(y, pred, beta=2, average="samples", zero_division=0), abs=1e-6
    )
    assert m["f1_micro"] == pytest.approx(sk.f1_score(y, pred, average="micro"), abs=1e-6)
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(y, pred), abs=1e-6)
    assert m["roc_auc"] == pytest.approx(sk.roc_auc_score(y, probs, average="macro"), abs=1e-6)
    assert m["log_loss"] == pytest.approx(
        sk.log_loss(y.ravel(), np.clip(probs.ravel(), 1e-15, 1 - 1e-15)), abs=1e-6
    )
    assert "qwk" not in m


def test_score_is_higher_is_better_and_accepts_both_target_kinds():
    probs, y = single(0)
    assert metrics.score("log_loss", probs, y) == -metrics.value("log_loss", probs, y)
    assert metrics.score("accuracy", probs, y) == metrics.value("accuracy", probs, y)
    mprobs, my = multi(0)
    assert 0 < metrics.score("f2_samples", mprobs, my) <= 1


def test_metric_for_the_other_task_is_refused_by_name():
    probs, y = single(0)
    with pytest.raises(PipelineError, match="'f2_samples' applies to multi_label tasks"):
        metrics.score("f2_samples", probs, y)


def test_decisions_never_empty():
    probs = np.array([[0.1, 0.3, 0.2], [0.9, 0.6, 0.0]])
    assert metrics.decide_tags(probs, 0.5).tolist() == [[False, True, False], [True, True, False]]


def test_expected_value_decoding_uses_the_whole_distribution():
    probs = np.array([[0.5, 0.0, 0.0, 0.5, 0.0], [0.1, 0.7, 0.2, 0.0, 0.0]])
    assert metrics.decode_labels(probs, "qwk").tolist() == [2, 1]
    assert metrics.decode_labels(probs, "accuracy").tolist() == [0, 1]


def test_auc_of_a_fold_without_both_classes_is_chance():
    probs = np.array([[0.2, 0.8], [0.6, 0.4]])
    assert metrics.value("roc_auc", probs, np.array([1, 1])) == 0.5


@pytest.mark.parametrize("name", ["f2_samples", "f1_micro", "accuracy"])
@pytest.mark.parametrize("seed", SEEDS)
def test_tuned_thresholds_never_worse_than_half(name, seed):
    probs, y = multi(seed)
    thr = metrics.tune_thresholds(name, probs, y)
    assert thr.shape == (5,)
    assert metrics.value(name, probs, y, thr) >= metrics.value(name, probs, y, 0.5)


def test_tuning_finds_a_low_threshold_for_an_under_confident_tag():
    rng = np.random.default_rng(0)
    y = (rng.random((300, 2)) < 0.5).astype(float)
    y[:, 0] = 1  # tag 0 everywhere keeps every row non-empty
    probs = np.column_stack([np.full(300, 0.9), 0.1 + 0.25 * y[:, 1]])  # tag 1 never reaches 0.5
    thr = metrics.tune_thresholds("f2_samples", probs, y)
    assert 0.1 < thr[1] <= 0.35
    assert metrics.value("f2_samples", probs, y, thr) == pytest.approx(1.0)
    assert metrics.value("f2_samples", probs, y, 0.5) < 0.95


def test_probability_metrics_keep_half():
    probs, y = multi(1)
    assert metrics.tune_thresholds("roc_auc", probs, y).tolist() == [0.5] * 5


def test_confusion_pairs_single_and_multi_label():
    from pipeline.metrics import confusion_pairs

    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    pairs = confusion_pairs(probs, np.array([0, 1, 1]), ["cat", "dog"], "accuracy", None)
    assert pairs.values.tolist() == [["cat", "cat"], ["dog", "dog"], ["dog", "cat"]]
    tags = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    probs = np.array([[0.9, 0.6, 0.1], [0.2, 0.8, 0.1]])
    pairs = confusion_pairs(probs, tags, ["a", "b", "c"], "f2_samples", np.full(3, 0.5))
    assert sorted(map(tuple, pairs.values.tolist())) == [
        ("(none)", "b"),
        ("a", "a"),
        ("b", "b"),
        ("c", "(missed)"),
    ]

"""The semi-supervised round: selection, mixing 1:N, soft-label loss, no fold leakage, students."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from accelerate import Accelerator
from safetensors.torch import load_file

from pipeline import batches, model, roles, specs
from pipeline.data import confidence_weights, mixed_batches, pseudo_per_batch, two_views_batch
from pipeline.files import PipelineError
from pipeline.index import fold_rows, read_folds, read_index
from pipeline.loop import Criterion
from pipeline.params import Pseudo, parse_params
from pipeline.preds import read_preds, write_preds
from pipeline.stages import diagnose, ensemble, export, predict, pseudolabel, submit, train
from pipeline.steps import online_loss
from pipeline.targets import OnlineTargets, sharpened
from pipeline.transforms import epoch_strength
from tests.conftest import CLASSES, ROOT, merge, tiny_params

# --- mixing: every batch 1:N ------------------------------------------------------------


def test_pseudo_share_of_a_batch():
    assert pseudo_per_batch(64, 3) == 16  # 16 pseudo + 48 labeled
    assert pseudo_per_batch(64, 2) == 21  # 64 / 3 = 21.3 -> 21 + 43
    assert pseudo_per_batch(64, 4) == 13  # 12.8 -> 13 + 51
    assert pseudo_per_batch(8, 3) == 2


@pytest.mark.parametrize("ratio", [2, 2.5, 3, 4])
@pytest.mark.parametrize(("n_labeled", "n_pseudo"), [(500, 40), (500, 3000), (97, 10), (60, 21)])
def test_every_batch_holds_the_configured_split(ratio, n_labeled, n_pseudo):
    """The side that needs more batches leads: each of its items once, the other side cycling
    (each used floor or ceil of its uses / its count) or subsampled (none twice)."""
    batch = 32
    order = np.random.default_rng(0).permutation(n_labeled)
    batches = mixed_batches(order, n_pseudo, batch, ratio, seed=1)
    want_ps = pseudo_per_batch(batch, ratio)
    splits = [(sum(i < n_labeled for i in b), sum(i >= n_labeled for i in b)) for b in batches]
    for lab, ps in splits[:-1]:
        assert (lab, ps) == (batch - want_ps, want_ps)
    lab, ps = splits[-1]  # the rest of the leading side: the other's share within one item
    assert abs(ps - lab / ratio) <= 1
    labeled = Counter(i for b in batches for i in b if i < n_labeled)
    pseudo = Counter(i - n_labeled for b in batches for i in b if i >= n_labeled)
    pseudo_leads = n_pseudo * (batch - want_ps) > n_labeled * want_ps
    lead, follow = (pseudo, labeled) if pseudo_leads else (labeled, pseudo)
    n_lead, n_follow = (n_pseudo, n_labeled) if pseudo_leads else (n_labeled, n_pseudo)
    assert sorted(lead) == list(range(n_lead)) and set(lead.values()) == {1}
    assert set(follow) <= set(range(n_follow))
    used = sum(follow.values())
    if used >= n_follow:  # they cycle
        assert len(follow) == n_follow
        assert set(follow.values()) <= {used // n_follow, math.ceil(used / n_follow)}
    else:  # subsampled: none twice
        assert max(follow.values()) == 1


def test_a_test_set_larger_than_the_training_rows_is_seen_whole_every_epoch():
    """500 labeled rows, 3000 pseudolabels at 1:3 in batches of 32 (24 + 8): 375 batches, every
    pseudolabel once and every labeled row 18 times, where one pass over the labeled rows
    (21 batches) showed 167 of the 3000."""
    batches = mixed_batches(np.arange(500), 3000, 32, 3, seed=0)
    assert len(batches) == 375 and all(len(b) == 32 for b in batches)
    counts = Counter(i for b in batches for i in b)
    assert all(counts[i] == 18 for i in range(500))
    assert all(counts[500 + j] == 1 for j in range(3000))


def test_the_control_has_the_students_batches_with_labeled_rows_in_the_pseudo_places():
    """pseudo.control: as many batches of the same size as the student's, nothing pseudolabeled;
    the student's labeled places hold the same rows in the same order, its pseudolabeled places
    labeled rows of the copy after them (500 + i: row i under the pseudolabels' augmentation)."""
    for n_pseudo in (40, 3000):
        student = mixed_batches(np.arange(500), n_pseudo, 32, 3, seed=4)
        control = mixed_batches(np.arange(500), n_pseudo, 32, 3, seed=4, fill=True)
        assert [len(b) for b in control] == [len(b) for b in student]
        assert all(i < 1000 for b in control for i in b)
        assert [sum(i >= 500 for i in b) for b in control] == [
            sum(i >= 500 for i in b) for b in student
        ]
        student_labeled = [[i for i in b if i < 500] for b in student]
        assert [
            c[: len(s)] for c, s in zip(control, student_labeled, strict=True)
        ] == student_labeled


def test_pseudo_rows_are_reshuffled_every_pass_and_epoch():
    order = np.arange(300)
    first = mixed_batches(order, 20, 16, 3, seed=1)
    stream = [i - 300 for b in first for i in b if i >= 300]
    passes = [stream[i : i + 20] for i in range(0, len(stream) - 19, 20)]
    assert len(passes) >= 3 and all(sorted(p) == list(range(20)) for p in passes)
    assert passes[0] != passes[1]  # reshuffled between passes
    assert mixed_batches(order, 20, 16, 3, seed=2) != first  # and between epochs
    assert mixed_batches(order, 20, 16, 3, seed=1) == first  # seeded


def test_a_last_batch_of_one_item_joins_the_one_before():
    batches = mixed_batches(np.arange(25), 0, 8, 3, seed=0)  # no pseudolabels: 8 labeled each
    assert [len(b) for b in batches] == [8, 8, 9]


@pytest.mark.parametrize("ratio", [1, 1.99, 4.5, 10])
def test_ratio_outside_two_to_four_is_named(ratio):
    with pytest.raises(PipelineError, match=r"pseudo\.ratio.*N from 2 to 4"):
        parse_params(tiny_params({"pseudo": {"ratio": ratio}}))


def test_init_teacher_needs_a_teacher_of_that_backbone():
    with pytest.raises(PipelineError, match="pseudo.init: scratch"):
        parse_params(tiny_params({"pseudo": {"backbones": {"resnet10t": "resnet18"}}}))
    p = parse_params(
        tiny_params({"pseudo": {"backbones": {"resnet10t": "resnet18"}, "init": "scratch"}})
    )
    assert p.students() == {"resnet10t": "resnet18"}


# --- selection ----------------------------------------------------------------------------


def test_nothing_under_the_threshold_is_selected():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3) * 0.3, 500)
    keep = pseudolabel.select(probs, "single_label", 0.8)
    assert keep.any() and (~keep).any()
    assert (probs[keep].max(1) >= 0.8).all() and (probs[~keep].max(1) < 0.8).all()


def test_multi_label_keeps_images_whose_every_tag_is_certain():
    probs = np.array([[0.97, 0.02, 0.99], [0.97, 0.5, 0.99], [0.15, 0.04, 0.95], [0.08, 0, 1]])
    keep = pseudolabel.select(probs, "multi_label", 0.9)
    assert keep.tolist() == [True, False, False, True]  # 0.15 is inside [0.1, 0.9], 0.08 not


def test_class_cap_holds_a_class_to_its_training_share_of_the_confident_images():
    # 90 confident images of class 0, 10 of class 1; training shares 50/50
    probs = np.array([[0.99, 0.01]] * 90 + [[0.05, 0.95]] * 10)
    probs[:90, 0] -= np.linspace(0, 0.05, 90)  # distinct confidences
    probs[:90, 1] = 1 - probs[:90, 0]
    kept = pseudolabel.select(probs, "single_label", 0.9, shares=np.array([0.5, 0.5]))
    assert kept[90:].all() and kept[:90].sum() == 50  # half of the 100 confident ones
    assert kept[:50].all()  # the most confident of the majority class stay
    assert pseudolabel.select(probs, "single_label", 0.9).sum() == 100  # no cap: all of them


def test_one_hard_class_never_throttles_the_others():
    # 10 classes of equal training share; the teachers are sure of 100 test images of each class
    # but 3 of the hard class 7 (97 more of class 7 fall below the threshold)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 100)
    top = np.where(labels == 7, 0.5, rng.uniform(0.91, 0.999, 1000))
    top[np.flatnonzero(labels == 7)[:3]] = 0.95
    probs = np.full((1000, 10), 0.0)
    probs[np.arange(1000), labels] = top
    probs += ((1 - top) / 9)[:, None] * (probs == 0)
    confident = probs.max(1) >= 0.9
    kept = pseudolabel.select(probs, "single_label", 0.9, shares=np.full(10, 0.1))
    assert confident.sum() == 903 and kept.sum() >= confident.sum() / 2
    per_class = np.bincount(labels[kept], minlength=10)
    assert per_class[7] == 3  # the hard class keeps all it has
    assert (np.delete(per_class, 7) == 91).all()  # the others: ceil(0.1 * 903), not 3 each
    for c in range(10):  # within a class, the most confident stay
        left_out = probs[confident & ~kept & (labels == c)].max(1)
        assert not left_out.size or probs[kept & (labels == c)].max(1).min() >= left_out.max()
    frame = pd.DataFrame(probs, columns=[f"c{i}" for i in range(10)])
    rows, counts = pseudolabel.label_frame(
        frame, "single_label", pseudo_params(threshold=0.9), np.full(10, 0.1), None
    )
    assert len(rows) == kept.sum() and counts["capped"].sum() == confident.sum() - kept.sum()
    assert counts.loc["c7"].tolist() == [3, 97, 0] and counts.loc["c0"].tolist() == [91, 9, 9]


def test_confidence_weights_run_from_chance_to_certainty():
    assert confidence_weights([0.25, 0.625, 1.0, 0.1], 4, False).tolist() == [0, 0.5, 1, 0]
    assert confidence_weights([0.5, 0.75, 1.0], 3, True).tolist() == [0, 0.5, 1]  # a tag's


def test_confidence_weighting_keeps_every_image_and_the_student_weighs_each(workdir):
    rng = np.random.default_rng(0)
    probs = pd.DataFrame(rng.dirichlet(np.ones(3), 400), columns=["a", "b", "c"])
    ps = pseudo_params(threshold=0.9, weighting="confidence")
    rows, counts = pseudolabel.label_frame(probs, "single_label", ps, None, None)
    assert len(rows) == 400 and (probs.max(axis=1) < 0.9).sum() > 300  # no cut at the threshold
    assert counts["dropped"].sum() == 0
    p = teach(workdir, {"pseudo": {"threshold": 0.0, "weight": 0.5, "weighting": "confidence"}})
    spec = specs.student_spec(p, "resnet10t", 0)
    d = batches.fold_data(p, read_index(), model.create("resnet10t", 3, False), 0, None)
    pseudo_part = batches.epoch_dataset(p, spec, d, 0, 0, 2).dataset.datasets[1]
    want = 0.5 * np.clip((spec.pseudo["confidence"].to_numpy() - 1 / 3) / (2 / 3), 0, 1)
    got = np.array([pseudo_part[i][2] for i in range(len(pseudo_part))])
    assert np.allclose(got, want, atol=1e-6) and got.min() < got.max() <= 0.5


@pytest.mark.parametrize("seed", range(5))
def test_no_class_keeps_more_than_its_share_of_the_confident_images(seed):
    rng = np.random.default_rng(seed)
    available = rng.integers(0, 200, 6)
    shares = rng.dirichlet(np.ones(6))
    n = pseudolabel.cap_counts(available, shares)
    cap = np.ceil(shares * available.sum() - 1e-9)
    assert (n <= available).all() and (n <= cap).all() and n.sum() > 0
    assert ((n == available) | (n == cap)).all()  # all it has, or its whole share


def test_soft_targets_sharpen_with_temperature():
    p = np.array([[0.6, 0.3, 0.1]])
    np.testing.assert_allclose(sharpened(p, "single_label", 1.0), p)
    sharp = sharpened(p, "single_label", 0.5)
    np.testing.assert_allclose(sharp, [[0.36, 0.09, 0.01]] / np.float64(0.46))
    tags = sharpened(np.array([[0.8, 0.5]]), "multi_label", 0.5)
    np.testing.assert_allclose(tags, [[0.64 / (0.64 + 0.04), 0.5]])


# --- the loss ----------------------------------------------------------------------------


def test_soft_label_loss_is_cross_entropy_against_the_targets_by_hand():
    torch.manual_seed(0)
    logits, targets = torch.randn(6, 4), torch.softmax(torch.randn(6, 4), 1)
    by_hand = -(targets * torch.log_softmax(logits, 1)).sum(1).mean()
    loss = Criterion("single_label", None, 0.0)(logits, targets)
    torch.testing.assert_close(loss, by_hand)


def test_one_hot_targets_give_the_class_id_loss_with_weights_and_smoothing():
    torch.manual_seed(1)
    logits, y = torch.randn(8, 3), torch.tensor([0, 1, 2, 2, 1, 0, 0, 2])
    w = torch.tensor([0.5, 2.0, 1.0])
    want = torch.nn.functional.cross_entropy(logits, y, weight=w, label_smoothing=0.1)
    crit = Criterion("single_label", w, 0.1)
    torch.testing.assert_close(crit(logits, y), want)
    torch.testing.assert_close(crit(logits, torch.eye(3)[y]), want)


def test_item_weights_scale_the_pseudolabeled_items():
    torch.manual_seed(2)
    logits, t = torch.randn(4, 3), torch.softmax(torch.randn(4, 3), 1)
    per = -(t * torch.log_softmax(logits, 1)).sum(1)
    s = torch.tensor([1.0, 1.0, 0.25, 0.25])  # two labeled, two pseudolabeled at weight 0.25
    loss = Criterion("single_label", None, 0.0)(logits, t, s)
    torch.testing.assert_close(loss, (per * s).sum() / 4)
    bce = Criterion("multi_label", None, 0.0)(logits, t, s)
    per_bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, t, reduction="none")
    torch.testing.assert_close(bce, (per_bce.mean(1) * s).sum() / 4)


def test_class_weights_with_soft_targets_and_item_weights():
    torch.manual_seed(3)
    logits, t = torch.randn(5, 3), torch.softmax(torch.randn(5, 3), 1)
    w, s = torch.tensor([0.5, 2.0, 1.0]), torch.tensor([1.0, 1.0, 1.0, 0.5, 0.5])
    per = -(t * w * torch.log_softmax(logits, 1)).sum(1)  # weighted soft cross-entropy
    loss = Criterion("single_label", w, 0.0)(logits, t, s)
    torch.testing.assert_close(loss, (per * s).sum() / (t * w).sum())


# --- the pseudolabel stage: no leakage across folds ---------------------------------------


def fake_teacher(root, name: str, fold: int, probs: np.ndarray, seed: int = 0) -> None:
    """preds/<name>/fold<k>/ oof and test and a weights file, as train + predict write them."""
    index, folds = read_index(), read_folds()
    _, valid = fold_rows(index, folds, fold)
    rng = np.random.default_rng(seed + fold)
    out = root / "preds" / name / f"fold{fold}"
    out.mkdir(parents=True, exist_ok=True)
    for split, ids, p in (
        ("oof", index.train["id"].iloc[valid], rng.dirichlet(np.ones(3), len(valid))),
        ("test", index.test["id"], probs),
    ):
        write_preds(out, split, ids, p, CLASSES)
    weights = root / "models" / name / f"fold{fold}" / "model.safetensors"
    weights.parent.mkdir(parents=True, exist_ok=True)
    weights.write_bytes(f"teacher {name} {fold} {seed}".encode())


def pseudo_params(**over) -> Pseudo:
    return parse_params(tiny_params({"pseudo": over})).pseudo


def confident(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.ones(3) * 0.2, n)


def test_fold_k_pseudolabels_come_from_fold_k_teachers_only(workdir, capsys):
    ps = pseudo_params(threshold=0.6)
    for k in (0, 1):
        fake_teacher(workdir, "m", k, confident(8, k))
    pseudolabel.run(ps, ["m"], [0, 1], "accuracy")
    before = [(workdir / f"pseudo/fold{k}/labels.csv").read_text() for k in (0, 1)]
    assert len(pd.read_csv(workdir / "pseudo/fold0/labels.csv")) > 0
    fake_teacher(workdir, "m", 1, confident(8, 99), seed=5)  # fold 1's teacher changes
    pseudolabel.run(ps, ["m"], [0, 1], "accuracy")
    assert (workdir / "pseudo/fold0/labels.csv").read_text() == before[0]
    assert (workdir / "pseudo/fold1/labels.csv").read_text() != before[1]
    source = json.loads((workdir / "pseudo/fold0/source.json").read_text())
    assert source["labelled_by"] == ["m fold 0"] and "m" in source["teacher_weights"]
    assert "LEAKS" not in capsys.readouterr().out


def test_ensemble_source_says_it_leaks(workdir, capsys):
    for k in (0, 1):
        fake_teacher(workdir, "m", k, confident(8, k))
    ensemble.run(["m"], [0, 1], "accuracy")
    pseudolabel.run(pseudo_params(source="ensemble", threshold=0.0), ["m"], [0, 1], "accuracy")
    out = capsys.readouterr().out
    assert "leaks validation labels" in out and "optimistic" in out
    blend = read_preds(workdir / "ensemble", "test", CLASSES)
    labels = read_preds(workdir / "pseudo/fold0", "targets", CLASSES)
    assert len(labels) == len(blend)  # threshold 0: every test image
    np.testing.assert_allclose(labels, blend.loc[labels.index, CLASSES], atol=1e-6)


def test_counts_per_class_kept_and_dropped_are_a_metric(workdir):
    probs = np.array([[0.95, 0.03, 0.02]] * 4 + [[0.4, 0.35, 0.25]] * 2 + [[0.1, 0.1, 0.8]] * 2)
    for k in (0, 1):
        fake_teacher(workdir, "m", k, probs)
    report = pseudolabel.run(
        pseudo_params(threshold=0.9, class_cap=False), ["m"], [0, 1], "accuracy"
    )
    saved = json.loads((workdir / "metrics/pseudo.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["fold0"]["kept"] == 4
    assert saved["fold0"]["per_class"] == {
        "cat": {"kept": 4, "dropped": 2, "capped": 0},
        "dog": {"kept": 0, "dropped": 0, "capped": 0},
        "fox": {"kept": 0, "dropped": 2, "capped": 0},
    }
    hard = pseudolabel.run(
        pseudo_params(threshold=0.9, soft=False, class_cap=False), ["m"], [0, 1], "accuracy"
    )
    assert hard["fold0"]["kept"] == 4
    labels = read_preds(workdir / "pseudo/fold0", "targets", CLASSES)
    assert labels.to_numpy().tolist() == [[1.0, 0.0, 0.0]] * 4


def test_small_test_set_is_warned_about_with_both_numbers(workdir, capsys):
    for k in (0, 1):
        fake_teacher(workdir, "m", k, confident(8, k))
    pseudolabel.run(pseudo_params(), ["m"], [0, 1], "accuracy")
    assert "test set (8 images) is less than half the training set (48)" in capsys.readouterr().out


# --- students: the teachers' code path with other inputs ----------------------------------


def teach(workdir, over: dict | None = None):
    """Real teachers on both folds, their predictions, ensemble and pseudolabels."""
    p = parse_params(tiny_params({"pseudo": {"threshold": 0.0}, **(over or {})}))
    for k in (0, 1):
        train.run(p, "resnet10t", k)
        predict.run(p, "resnet10t", k)
    ensemble.run(["resnet10t"], [0, 1], "accuracy")
    pseudolabel.run(p.pseudo, ["resnet10t"], [0, 1], "accuracy")
    return p


def test_student_of_fold_k_never_trains_on_fold_k_validation_rows(workdir):
    p = teach(workdir, {"pseudo": {"threshold": 0.0, "weight": 0.5}})
    spec = specs.student_spec(p, "resnet10t", 0)
    index = read_index()
    d = batches.fold_data(p, index, model.create("resnet10t", 3, False), 0, None)
    loader = batches.train_loaders(p, spec, d, 0)(0, 2)
    labeled_part, pseudo_part = loader.dataset.dataset.dataset.datasets  # EpochData, Seeded
    _, valid = fold_rows(index, read_folds(), 0)
    trained = set(labeled_part.images.rows.tolist())
    assert trained == set(d.train_rows.tolist()) and not trained & set(valid.tolist())
    used = [i for b in loader.batch_sampler for i in b]
    n = len(labeled_part)
    rows = {int(labeled_part.images.rows[i]) for i in used if i < n}  # index.train positions
    assert rows == trained and not rows & set(valid.tolist())  # every training row, no valid row
    test_ids = index.test["id"].iloc[pseudo_part.images.rows]
    assert set(test_ids) == set(spec.pseudo["id"]) and not set(test_ids) & set(index.train["id"])
    x, y, w = next(iter(loader))
    assert x.shape[0] == 8 and y.shape == (8, 3) and w.tolist() == [1.0] * 6 + [0.5] * 2


def test_a_student_refuses_targets_that_are_not_its_labels_rows(workdir):
    p = teach(workdir, {"pseudo": {"threshold": 0.0}})
    spec = specs.student_spec(p, "resnet10t", 0)
    folder = workdir / "pseudo/fold0"
    assert spec.pseudo.columns.tolist() == ["id", "label", "confidence", *CLASSES]
    targets = read_preds(folder, "targets", CLASSES)
    np.testing.assert_allclose(spec.pseudo[CLASSES].to_numpy(), targets.to_numpy())
    assert Path("pseudo/fold0/targets.npy") in spec.files  # new targets change the resume key
    write_preds(folder, "targets", targets.index[::-1], targets.to_numpy(), CLASSES)
    with pytest.raises(PipelineError, match=r"targets.json: its ids are not those of .*labels"):
        specs.student_spec(p, "resnet10t", 0)
    (folder / "targets.npy").unlink()
    with pytest.raises(PipelineError, match=r"targets.npy: missing.*dvc repro pseudolabel"):
        specs.student_spec(p, "resnet10t", 0)


def test_the_control_student_trains_the_same_epochs_on_labeled_rows_only(workdir, capsys):
    p = teach(workdir, {"pseudo": {"threshold": 0.0, "control": True}})
    spec = specs.student_spec(p, "resnet10t", 0)
    assert len(spec.pseudo) == 0 and spec.epochs == p.pseudo.epochs and spec.init is not None
    kept = pd.read_csv(workdir / "pseudo/fold0/labels.csv")
    assert spec.matched == len(kept) > 0  # its batches are sized by the student's pseudolabels
    d = batches.fold_data(p, read_index(), model.create("resnet10t", 3, False), 0, None)
    loader = batches.train_loaders(p, spec, d, 0)(0, 2)
    labeled_part, pseudo_part = loader.dataset.dataset.dataset.datasets
    made = list(loader.batch_sampler)
    like = mixed_batches(np.arange(len(labeled_part)), len(kept), d.batch, p.pseudo.ratio, 0)
    assert [len(b) for b in made] == [len(b) for b in like]  # the student's batches, in size
    n = len(labeled_part)
    assert len(pseudo_part) == n  # the labeled rows again, for the pseudolabels' places
    assert {i % n for b in made for i in b} == set(range(n))
    assert [sum(i >= n for i in b) for b in made] == [sum(i >= n for i in b) for b in like]
    train.run(p, "resnet10t", 0, student=True)
    assert "pseudo.control: the student trains on labeled rows only" in capsys.readouterr().out
    info = json.loads((workdir / "students/models/resnet10t/fold0/model.json").read_text())
    assert info["pseudolabeled"] == 0
    student = load_file(str(workdir / "students/models/resnet10t/fold0/model.safetensors"))
    teacher = load_file(str(workdir / "models/resnet10t/fold0/model.safetensors"))
    assert not torch.equal(student["fc.weight"], teacher["fc.weight"])  # it did train on


def test_the_drop_control_trains_the_students_labeled_rows_step_for_step():
    """pseudo.control: drop: the student's batches with the pseudolabels left out."""
    for n_pseudo in (40, 3000):
        student = mixed_batches(np.arange(500), n_pseudo, 32, 3, seed=4)
        control = mixed_batches(np.arange(500), n_pseudo, 32, 3, seed=4, fill=True)
        dropped = batches.without_copies(control, 500)
        labeled = [[i for i in b if i < 500] for b in student]
        assert len(dropped) == len(student) and dropped[:-1] == labeled[:-1]
        assert dropped[-1][: len(labeled[-1])] == labeled[-1] and len(dropped[-1]) >= 2
    assert batches.without_copies([[0, 1, 9], [2, 8]], 5) == [[0, 1], [2, 0]]  # BatchNorm: two


def test_the_drop_control_stage_leaves_the_pseudolabels_places_out(workdir, capsys):
    p = teach(workdir, {"pseudo": {"threshold": 0.0, "control": "drop"}})
    spec = specs.student_spec(p, "resnet10t", 0)
    d = batches.fold_data(p, read_index(), model.create("resnet10t", 3, False), 0, None)
    made = list(batches.train_loaders(p, spec, d, 0)(0, 2).batch_sampler)
    n_ps = pseudo_per_batch(d.batch, p.pseudo.ratio)
    assert all(i < len(d.train_rows) for b in made for i in b)
    assert [len(b) for b in made[:-1]] == [d.batch - n_ps] * (len(made) - 1)
    train.run(p, "resnet10t", 0, student=True)
    out = capsys.readouterr().out
    assert f"many batches of {d.batch - n_ps} (the pseudolabels left out) as with its" in out
    assert f"batches: 0 pseudolabeled + {d.batch - n_ps} labeled (0.0% pseudo)" in out


def test_student_noise_overrides_the_teachers_augmentation_and_dropout(workdir, capsys):
    noise = {"augment.strength_start": 1.0, "augment.mixup": 0.2, "model.drop_path_rate": 0.1}
    p = teach(workdir, {"pseudo": {"threshold": 0.0, "noise": noise}})
    s = p.student()
    assert (s.augment.strength_start, s.augment.mixup, s.model.drop_path_rate) == (1.0, 0.2, 0.1)
    assert (p.augment.strength_start, p.augment.mixup, p.model.drop_path_rate) == (0.3, 0.0, 0.0)
    assert epoch_strength(s.augment, 0, 3) == 1.0 > epoch_strength(p.augment, 0, 3)
    train.run(p, "resnet10t", 0, student=True)
    out = capsys.readouterr().out
    assert (
        "student noise: augment.strength_start 1.0, augment.mixup 0.2, model.drop_path_rate" in out
    )
    quiet = parse_params(tiny_params({"pseudo": {"threshold": 0.0}}))
    loud = specs.fingerprint(p.student(), "resnet10t", 0, student=True)
    assert loud["params"] != specs.fingerprint(quiet, "resnet10t", 0, student=True)["params"]


def test_noise_on_pseudolabels_augments_only_the_pseudolabeled_images(workdir, capsys):
    """pseudo.noise_on: pseudolabels: the labeled rows keep the teachers' augmentation (none at
    epoch 0 here), the pseudolabeled images take pseudo.noise's; so do the control's rows in the
    pseudolabels' places."""
    noise = {"augment.strength_start": 1.0, "augment.clean_epochs": 0}
    ps = {"threshold": 0.0, "noise": noise, "noise_on": "pseudolabels"}
    aug = {"strength_start": 0.0}
    p = teach(workdir, {"pseudo": ps, "augment": aug})
    s = p.student()
    assert s.augment == p.augment and s.pseudo_augment().strength_start == 1.0
    d = batches.fold_data(s, read_index(), model.create("resnet10t", 3, False), 0, None)
    plain = batches.build_transforms("valid", 0, None, **d.norm)
    for control in (False, True):
        c = parse_params(tiny_params({"pseudo": ps | {"control": control}, "augment": aug}))
        spec = specs.student_spec(c.student(), "resnet10t", 0)
        labeled, places = batches.epoch_dataset(c.student(), spec, d, 0, 0, 3).dataset.datasets
        assert len(places) == (len(d.train_rows) if control else len(spec.pseudo)) > 0
        for part, augmented in ((labeled, False), (places, True)):
            unaugmented = copy.copy(part.images)
            unaugmented.transform = plain
            assert torch.equal(part.images[0][0], unaugmented[0][0]) is not augmented
    train.run(p, "resnet10t", 0, student=True)
    out = capsys.readouterr().out
    assert "student noise (augment keys: the pseudolabeled images only): augment.strength_" in out


# --- online targets (pseudo.weighting: online, FixMatch) -----------------------------------


def test_online_targets_are_the_weak_views_predictions_counted_above_the_threshold():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25], [0.05, 0.05, 0.9]])
    hard = OnlineTargets("single_label", 0.6, soft=False, temperature=1.0)
    t, counted = hard(probs.log())  # logits whose softmax is `probs`
    assert t.tolist() == [[1, 0, 0], [1, 0, 0], [0, 0, 1]] and counted.tolist() == [1, 0, 1]
    sharp, _ = OnlineTargets("single_label", 0.6, soft=True, temperature=0.5)(probs.log())
    torch.testing.assert_close(sharp[0], torch.tensor([0.49, 0.04, 0.01]) / 0.54)
    tags = torch.tensor([[0.95, 0.02], [0.95, 0.6]])
    t, counted = OnlineTargets("multi_label", 0.9, False, 1.0)(torch.logit(tags))
    assert t.tolist() == [[1, 0], [1, 1]] and counted.tolist() == [1, 0]  # 0.6: uncertain tag


def test_online_loss_by_hand_one_forward_weak_views_targets_and_the_mask():
    """Two labeled rows and two unlabeled images: the unlabeled ones' targets come from the
    forward of their weak views (in the same batch), the unconfident one weighs nothing, and
    the targets carry no gradient: the same gradient as a loss on fixed targets."""
    torch.manual_seed(4)
    net = torch.nn.Linear(5, 3)
    x, weak = torch.randn(4, 5), torch.randn(2, 5)  # weak views of rows 1 and 3 only
    y = torch.eye(3)[[0, 0, 2, 0]]  # the unlabeled rows' targets are placeholders
    w, own = torch.tensor([0.5, 1.0, 1.0, 0.5]), torch.tensor([1, 3])
    online = OnlineTargets("single_label", 0.7, soft=False, temperature=1.0)
    crit = Criterion("single_label", None, 0.0, online)
    loss = online_loss(net, (x, y, w, weak, own), crit, Accelerator(cpu=True))
    loss.backward()
    got = net.weight.grad.clone()
    with torch.no_grad():
        guess = net(weak).softmax(1)
    t, keep = y.clone(), torch.ones(4)
    t[own], keep[own] = torch.eye(3)[guess.argmax(1)], (guess.amax(1) >= 0.7).float()
    assert keep[own].sum() == 1  # one counted, one not: the mask is exercised
    net.weight.grad = None
    by_hand = (-(t * net(x).log_softmax(1)).sum(1) * w * keep).sum() / 4
    by_hand.backward()
    torch.testing.assert_close(loss, by_hand)
    torch.testing.assert_close(got, net.weight.grad)


def test_online_students_train_on_two_views_of_every_test_image(workdir, capsys):
    """pseudolabel keeps every image (no cut, no cap: the student cuts online); a batch's
    unlabeled images come with the strong view (pseudo.noise) and the teachers' weak one, its
    labeled rows with none; the student trains. Its control makes no targets of its own."""
    noise = {"augment.strength_start": 1.0, "augment.clean_epochs": 0}
    ps = {"threshold": 0.9, "weighting": "online", "noise": noise, "noise_on": "pseudolabels"}
    p = teach(workdir, {"pseudo": ps, "augment": {"strength_start": 0.0}})
    spec = specs.student_spec(p, "resnet10t", 0)
    assert len(spec.pseudo) == len(read_index().test) and batches.online(spec)
    auto = parse_params(tiny_params({"pseudo": ps | {"lr": "auto"}, "lr_find": {"steps": 12}}))
    d = batches.fold_data(p, read_index(), model.create("resnet10t", 3, False), 0, None)
    labeled, unlabeled = batches.epoch_dataset(p, spec, d, 0, 0, 3).dataset.datasets
    assert labeled[0][3] is None
    strong, _, w, weak_view = unlabeled[0]
    plain = batches.build_transforms("valid", 0, None, **d.norm)
    unaugmented = copy.copy(unlabeled.weak)
    unaugmented.transform = plain
    assert w == 1.0 and torch.equal(weak_view, unaugmented[0][0])  # epoch 0: no augmentation
    assert not torch.equal(strong, weak_view)
    x, _, _, weak, own = two_views_batch([labeled[0], unlabeled[0], labeled[1], unlabeled[1]])
    assert own.tolist() == [1, 3] and torch.equal(weak[0], weak_view) and len(x) == 4
    train.run(auto, "resnet10t", 0, student=True)  # the LR range test on its batches too
    out = capsys.readouterr().out
    assert "its target the student's own on a weak view, counted where that reaches 0.9" in out
    assert "LR range test (full)" in out
    assert (workdir / "students/models/resnet10t/fold0/model.safetensors").exists()
    c = parse_params(tiny_params({"pseudo": ps | {"threshold": 0.0, "control": True}}))
    assert not batches.online(specs.student_spec(c, "resnet10t", 0))


def test_online_targets_of_a_multi_label_student_are_its_confident_tags():
    torch.manual_seed(5)
    net = torch.nn.Linear(4, 2)
    x, weak = torch.randn(3, 4), torch.randn(1, 4)
    y, w, own = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]), torch.ones(3), torch.tensor([2])
    crit = Criterion("multi_label", None, 0.0, OnlineTargets("multi_label", 0.5, True, 0.5))
    loss = online_loss(net, (x, y, w, weak, own), crit, Accelerator(cpu=True))
    with torch.no_grad():
        t = torch.cat([y[:2], (net(weak) / 0.5).sigmoid()])  # sharpened tags, every one counted
    per = torch.nn.functional.binary_cross_entropy_with_logits(net(x), t, reduction="none")
    torch.testing.assert_close(loss, per.mean(1).sum() / 3)


def test_an_online_students_checkpoint_is_not_resumed_under_another_threshold():
    p = parse_params(tiny_params({"pseudo": {"weighting": "online", "noise_on": "pseudolabels"}}))
    q = p.model_copy(update={"pseudo": p.pseudo.model_copy(update={"threshold": 0.8})})
    key = specs.fingerprint(p, "resnet10t", 0, student=True)
    assert key["params"] != specs.fingerprint(q, "resnet10t", 0, student=True)["params"]


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"augment": {"mixup": 0.2}}, "augment.mixup mixes whole batches: set it to 0.0"),
        ({"pseudo": {"noise_on": "all"}}, "set pseudo.noise_on: pseudolabels"),
    ],
)
def test_online_targets_need_whole_images_and_a_weak_teachers_view(over, message):
    ps = {"weighting": "online", "noise_on": "pseudolabels"}
    with pytest.raises(PipelineError, match=message):
        parse_params(tiny_params(merge({"pseudo": ps}, over)))


def test_batchwide_noise_on_pseudolabels_only_is_refused():
    noise = {"augment.mixup": 0.2}
    with pytest.raises(
        PipelineError, match="key .pseudo.noise.: augment.mixup mixes whole batches"
    ):
        parse_params(tiny_params({"pseudo": {"noise": noise, "noise_on": "pseudolabels"}}))


@pytest.mark.parametrize(
    ("noise", "message"),
    [
        ({"train.lr": 0.1}, "'train.lr' is not a student noise key"),
        ({"augment.strength_start": 2.0}, "pseudo.noise: augment.strength_start: Input should be"),
        ({"model.drop_rate": 1.5}, "pseudo.noise: model.drop_rate: Input should be less than 1"),
    ],
)
def test_a_bad_noise_key_or_value_is_named(noise, message):
    with pytest.raises(PipelineError, match=message):
        parse_params(tiny_params({"pseudo": {"noise": noise}}))


def test_student_refines_its_teacher_and_is_saved_as_a_student(workdir, capsys):
    p = teach(workdir)
    train.run(p, "resnet10t", 1, student=True)
    out = capsys.readouterr().out
    assert "batches: 2 pseudolabeled + 6 labeled (25.0% pseudo)" in out
    assert "trains in: head" not in out  # a refined teacher skips the head phase
    info = json.loads((workdir / "students/models/resnet10t/fold1/model.json").read_text())
    assert info["role"] == "student" and info["pseudolabeled"] == 8
    student = load_file(str(workdir / "students/models/resnet10t/fold1/model.safetensors"))
    teacher = load_file(str(workdir / "models/resnet10t/fold1/model.safetensors"))
    assert not torch.equal(student["fc.weight"], teacher["fc.weight"])
    assert (workdir / "students/dvclive/resnet10t/fold1/metrics.json").exists()


def test_student_refuses_a_teacher_that_did_not_make_its_labels(workdir):
    p = teach(workdir)
    weights = workdir / "models/resnet10t/fold0/model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"changed!")
    with pytest.raises(PipelineError, match="is not the teacher recorded in"):
        train.run(p, "resnet10t", 0, student=True)


def test_without_pseudolabels_the_teachers_make_the_submission(workdir, capsys):
    p = teach(workdir, {"pseudo": {"enabled": False}})
    for k in (0, 1):
        train.run(p, "resnet10t", k, student=True)
        predict.run(p, "resnet10t", k, role=roles.STUDENT)
    assert "skipped: pseudo.enabled is false" in capsys.readouterr().out
    assert not (workdir / "students/models/resnet10t/fold0/model.safetensors").exists()
    final = ensemble.run_final(p)
    assert final["submitted"] == "teacher resnet10t" and "student_cv" not in final
    submit.run("accuracy")
    pd.testing.assert_frame_equal(
        read_preds(workdir / "final", "test", CLASSES),
        read_preds(workdir / "ensemble", "test", CLASSES),
    )


def test_test_predictions_missing_ids_stop_with_the_teacher_named(workdir):
    for k in (0, 1):
        fake_teacher(workdir, "m", k, confident(8, k))
    teacher = read_preds(workdir / "preds/m/fold1", "test", CLASSES).iloc[:-1]
    write_preds(workdir / "preds/m/fold1", "test", teacher.index, teacher.to_numpy(), CLASSES)
    with pytest.raises(PipelineError, match=r"from m fold 1 lack 1 test ids"):
        pseudolabel.run(pseudo_params(), ["m"], [0, 1], "accuracy")
    assert not (workdir / "pseudo").exists()  # nothing half-written


def test_multi_label_fold_k_tags_use_no_fold_k_label(workdir):
    meta_path = workdir / "data/prepared/meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "task": "multi_label", "submission_kind": "tags"}))
    ps = pseudo_params(threshold=0.0, soft=False)
    for k in (0, 1):
        fake_teacher(workdir, "m", k, np.random.default_rng(k).uniform(0, 1, (8, 3)))
    pseudolabel.run(ps, ["m"], [0, 1], "f1_micro")
    before = (workdir / "pseudo/fold0/labels.csv").read_text()
    assert set(pd.read_csv(workdir / "pseudo/fold0/labels.csv")["label"]) <= {
        " ".join(t) for t in [["cat"], ["dog"], ["fox"], ["cat", "dog"], ["cat", "fox"],
                              ["dog", "fox"], ["cat", "dog", "fox"]]
    }  # fmt: skip
    fold0, fold1 = workdir / "preds/m/fold0", workdir / "preds/m/fold1"
    oof = read_preds(fold0, "oof", CLASSES)  # fold 0's teacher on fold 0's validation rows
    write_preds(fold0, "oof", oof.index, 1 - oof.to_numpy(), CLASSES)
    test = read_preds(fold1, "test", CLASSES)  # fold 1's labels for its student
    write_preds(fold1, "test", test.index, test.to_numpy() ** 2, CLASSES)
    pseudolabel.run(ps, ["m"], [0, 1], "f1_micro")
    assert (workdir / "pseudo/fold0/labels.csv").read_text() == before


def test_a_round_that_is_off_writes_its_skip_outputs_without_torch(tmp_path):
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump(tiny_params({"pseudo": {"enabled": False}}))
    )
    code = (
        "import sys; from pipeline.__main__ import main\n"
        "for stage in ('train', 'predict'):\n"
        "    assert main([stage, '--model', 'resnet10t', '--fold', '1', '--student']) == 0\n"
        "assert 'torch' not in sys.modules, 'torch was loaded'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, text=True,
                         capture_output=True)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "train: student resnet10t fold 1 skipped: pseudo.enabled is false" in res.stdout
    for folder in ("students/models", "students/preds"):
        marker = json.loads((tmp_path / folder / "resnet10t/fold1/skipped.json").read_text())
        assert "pseudo.enabled is false" in marker["skipped"]
    live = tmp_path / "students/dvclive/resnet10t/fold1"
    assert (live / "plots").is_dir() and (live / "metrics.json").exists()


# --- submit what the CV supports ----------------------------------------------------------


def fake_preds(folder, fold: int, noise: float, seed: int) -> None:
    """oof and test of one fold model: the true class's probability lowered by `noise`."""
    index, folds = read_index(), read_folds()
    _, valid = fold_rows(index, folds, fold)
    rng = np.random.default_rng(seed)
    labels = index.train["label"].iloc[valid].map(CLASSES.index).to_numpy()
    oof = rng.dirichlet(np.ones(3), len(valid)) * noise + np.eye(3)[labels] * (1 - noise)
    test = rng.dirichlet(np.ones(3), len(index.test))
    for split, ids, p in (
        ("oof", index.train["id"].iloc[valid], oof),
        ("test", index.test["id"], test),
    ):
        write_preds(folder / f"fold{fold}", split, ids, p, CLASSES)


@pytest.mark.parametrize("submit_as", ["auto", "students"])
def test_students_scoring_worse_beyond_noise_are_not_submitted_unless_asked(
    workdir, capsys, submit_as
):
    over = {"pseudo": {"submit": submit_as}, "competition": {"metric": "log_loss"}}
    p = parse_params(tiny_params(over))
    for k in (0, 1):  # teachers nearly right on every OOF row; students near chance
        fake_preds(workdir / "preds/resnet10t", k, noise=0.2, seed=k)
        fake_preds(workdir / "students/preds/resnet10t", k, noise=1.0, seed=10 + k)
    teachers = ensemble.run(["resnet10t"], [0, 1], "log_loss")
    final = ensemble.run_final(p)
    out = capsys.readouterr().out
    assert final["student_cv"] > teachers["cv"] + 0.3 and final["students_worse"]
    saved = json.loads((workdir / "metrics/final.json").read_text())
    if submit_as == "auto":
        assert final["submitted"] == "teacher resnet10t" and final["cv"] == teachers["cv"]
        assert saved["fell_back"] and "submitting the teachers" in out
        every = ("accuracy", "log_loss", "roc_auc")  # the teachers' full report, not one metric
        assert {m: saved["report"][m] for m in every} == {m: teachers[m] for m in every}
        assert diagnose.chosen_model(p) == (roles.TEACHER, "resnet10t")  # shows what is sent
        for k in (0, 1):  # what predict and train leave for export to bundle
            (workdir / f"preds/resnet10t/fold{k}/tta.json").write_text('{"beta": 1.0}')
            weights = workdir / f"models/resnet10t/fold{k}/model.safetensors"
            weights.parent.mkdir(parents=True)
            weights.write_bytes(b"teacher")
        (member,) = export.bundle_spec(p)["members"]
        assert member["label"] == "teacher resnet10t"
        assert member["folds"]["1"][0]["dir"] == "models/teacher/resnet10t/fold1"
        pd.testing.assert_frame_equal(
            read_preds(workdir / "final", "test", CLASSES),
            read_preds(workdir / "ensemble", "test", CLASSES),
        )
    else:
        assert final["submitted"] == "student resnet10t" and final["cv"] == final["student_cv"]
        assert "fell_back" not in saved and "WARNING" in out
        assert diagnose.chosen_model(p) == (roles.STUDENT, "resnet10t")


def test_students_within_noise_of_the_teachers_are_submitted(workdir):
    p = parse_params(tiny_params({"competition": {"metric": "accuracy"}}))
    for k in (0, 1):  # the same quality: the difference is noise
        fake_preds(workdir / "preds/resnet10t", k, noise=0.9, seed=k)
        fake_preds(workdir / "students/preds/resnet10t", k, noise=0.9, seed=20 + k)
    ensemble.run(["resnet10t"], [0, 1], "accuracy")
    final = ensemble.run_final(p)
    assert final["submitted"] == "student resnet10t" and final["students_worse"] is None

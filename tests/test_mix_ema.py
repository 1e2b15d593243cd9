"""mixup/cutmix on the augmentation ramp, and the EMA of the weights: numbers, a tiny run, resume.

Mixing: targets stay probability vectors (rows sum to one), a student's per-image weights mix
with them so that each source keeps its weight in the loss, and the chance that a batch is mixed
is the epoch's augmentation strength (0 in clean epochs). EMA: after n optimizer steps the
average equals the closed form with timm's warm-up; every epoch validates it, the kept weights
are the better of the two, and a killed run resumes to the very same average.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline import metrics
from pipeline.data import BatchMix, batch_mix, mix_targets
from pipeline.loop import Criterion, Ema
from pipeline.params import parse_params
from pipeline.preds import read_preds
from pipeline.stages import report, train
from pipeline.transforms import epoch_strength
from tests.conftest import tiny_params, write_prepared
from tests.test_reliability import interrupted_after_first_epoch

N_CLASSES = 3


def augment(**over):
    """The project's augment section with a linear ramp 0 -> 1 over 3 epochs and 1 clean epoch:
    epochs 0..3 of 4 have strength 0, 0.5, 1, 0."""
    ramp = {"ramp": "linear", "strength_start": 0.0, "strength_end": 1.0, "clean_epochs": 1}
    runs = {"train": {"epochs": 4}, "pseudo": {"epochs": 4}}
    return parse_params(tiny_params({"augment": {**ramp, **over}, **runs})).augment


def constant_images(n: int, size: int = 8) -> torch.Tensor:
    """Image i is the constant 10 i: a mixup pixel is a blend, a cutmix pixel is one of the two."""
    return torch.arange(n, dtype=torch.float32).mul(10).view(n, 1, 1, 1).expand(n, 3, size, size)


def test_the_ramp_is_zero_half_one_zero():
    aug = augment(mixup=0.2)
    assert [epoch_strength(aug, e, 4) for e in range(4)] == [0.0, 0.5, 1.0, 0.0]
    assert batch_mix(augment(), N_CLASSES) is None  # both alphas 0: no mixer at all


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mixed_single_label_targets_sum_to_one_and_match_the_images(kind):
    np.random.seed(0)
    mixer = BatchMix(augment(**{kind: 1.0}), N_CLASSES)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    x, t = mixer((constant_images(6).clone(), y), 2, 4)  # strength 1: always mixed
    assert t.shape == (6, N_CLASSES)
    assert torch.allclose(t.sum(1), torch.ones(6))
    lam = float(t[0, 0])  # row 0 (class 0) mixed with row 5 (class 2)
    assert 0 < lam < 1 and float(t[0, 2]) == pytest.approx(1 - lam)
    if kind == "mixup":  # every pixel is λ x_0 + (1 - λ) x_5
        assert torch.allclose(x[0], torch.full_like(x[0], (1 - lam) * 50))
    else:  # λ is the share of the image left as it was (timm's area-corrected λ)
        assert set(x[0].unique().tolist()) <= {0.0, 50.0}
        assert float((x[0] == 0).float().mean()) == pytest.approx(lam)


def test_multi_label_targets_mix_their_multi_hot_rows():
    np.random.seed(1)
    mixer = BatchMix(augment(mixup=1.0), N_CLASSES)
    y = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.float32)
    x, t = mixer((constant_images(4).clone(), y), 2, 4)
    lam = 1 - float(x[0, 0, 0, 0]) / 30  # row 0 (value 0) mixed with row 3 (value 30)
    assert torch.allclose(t, lam * y + (1 - lam) * y.flip(0), atol=1e-6)


def test_a_students_weights_mix_so_each_source_keeps_its_own():
    """Labeled rows (weight 1) and pseudolabeled ones (weight 0.5, and 0 while ramping up): the
    mixed batch's loss equals λ w_i loss(y_i) + (1 - λ) w_j loss(y_j) summed over rows."""
    y = torch.tensor([[1, 0, 0], [0, 1, 0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    w = torch.tensor([1.0, 1.0, 0.5, 0.0])
    lam = 0.7
    t, mixed_w = mix_targets(y, w, lam)
    assert torch.allclose(t.sum(1), torch.ones(4))
    assert torch.allclose(mixed_w, lam * w + (1 - lam) * w.flip(0))
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    per = -(logits.log_softmax(1)[:, None, :] * torch.stack([y, y.flip(0)], 1)).sum(2)
    expected = (lam * w * per[:, 0] + (1 - lam) * w.flip(0) * per[:, 1]).sum() / 4
    loss = Criterion("single_label", None, 0.0)(logits, t, mixed_w)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_the_chance_of_mixing_follows_the_strength_and_both_kinds_share_it():
    """2,000 batches an epoch: mixed ~0, ~half, all, none (clean); with both alphas on, cutmix
    (pixels from one image or the other) in about half of the mixed batches. (A cutmix box of
    no pixel, λ > 1 - 1/32² at 32 px, leaves a batch as it was: 1 in 2,000 at strength 1.)"""
    np.random.seed(2)
    mixer = BatchMix(augment(mixup=0.4, cutmix=1.0), N_CLASSES)
    mixed, cut = [], []
    for epoch in range(4):
        m = c = 0
        for _ in range(2000):
            x, *rest = mixer((constant_images(4, 32).clone(), torch.arange(4) % 3), epoch, 4)
            if rest[0].ndim == 2:
                m += 1
                c += set(x[0].unique().tolist()) <= {0.0, 30.0}
        mixed.append(m / 2000)
        cut.append(c / max(m, 1))
    assert mixed[0] == 0 and mixed[3] == 0 and mixed[2] > 0.995  # strength 0 (clean), 1
    assert abs(mixed[1] - 0.5) < 0.045  # 4 standard deviations of 2,000 draws
    assert abs(cut[1] - 0.5) < 0.065 and abs(cut[2] - 0.5) < 0.045


def test_the_ema_after_n_steps_is_the_closed_form_with_the_warm_up():
    """e_n = sum_k (1 - d_k) prod_(j>k) d_j w_k, d_k = min(decay, 1 - k^(-2/3)) (d_1 = 0): 40
    steps cross from the warm-up (d_k < 0.9 up to k = 31) to the decay itself."""
    torch.manual_seed(0)
    model, decay, n = nn.Linear(3, 2), 0.9, 40
    ema = Ema(model, decay)
    ws = []
    for _ in range(n):
        with torch.no_grad():
            for q in model.parameters():
                q.copy_(torch.randn_like(q))
        ws.append([q.detach().clone() for q in model.parameters()])
        ema.update(model)
    d = [min(decay, 1 - k ** (-2 / 3)) for k in range(1, n + 1)]
    assert d[0] == 0 and d[30] < decay == d[31]
    coef = [(1 - d[k]) * np.prod(d[k + 1 :]) for k in range(n)]
    assert sum(coef) == pytest.approx(1.0)
    for i, avg in enumerate(ema.avg.module.parameters()):
        closed = sum(c * w[i].double() for c, w in zip(coef, ws, strict=True))
        assert torch.allclose(avg.double(), closed, atol=1e-6)
    again = Ema(model, decay, ema.state())  # what a checkpoint holds continues the same average
    ema.update(model), again.update(model)
    assert again.steps == n + 1
    for a, b in zip(ema.avg.module.parameters(), again.avg.module.parameters(), strict=True):
        assert torch.equal(a, b)


EMA_RUN = {
    "competition": {"metric": "log_loss"},
    "train": {"epochs": 3, "lr": 0.02, "ema": 0.9},
    "augment": {"clean_epochs": 0},
}


def shuffle_labels(root: Path) -> None:
    """Labels drawn apart from the images: each step fits noise, so the raw weights' validation
    log loss swings while their average's stays near log(3) (this run's EMA wins each epoch)."""
    frames = {f: pd.read_csv(root / f) for f in ("data/prepared/train.csv", "folds/folds.csv")}
    labels = np.random.default_rng(0).permutation(frames["folds/folds.csv"]["label"].to_numpy())
    for f, frame in frames.items():
        frame.assign(label=labels).to_csv(root / f, index=False)


def test_the_kept_weights_are_the_emas_when_it_scores_better(workdir):
    """Each epoch validates both; the kept epoch and weights are the best of all 2 x 3 scores,
    and model.safetensors (its plain OOF predictions) scores what model.json says."""
    shuffle_labels(workdir)
    train.run(parse_params(tiny_params(EMA_RUN)), "resnet10t", 0)
    live, out = workdir / "dvclive/resnet10t/fold0", workdir / "models/resnet10t/fold0"
    raw = pd.read_csv(live / "plots/metrics/valid_log_loss.tsv", sep="\t")["valid_log_loss"]
    avg = pd.read_csv(live / "plots/metrics/ema_valid_log_loss.tsv", sep="\t")
    avg = avg["ema_valid_log_loss"]
    assert len(raw) == len(avg) == 3
    best = float(np.minimum(raw, avg).min())
    epoch = int(np.minimum(raw, avg).argmin()) + 1
    info = json.loads((out / "model.json").read_text())
    summary = json.loads((live / "metrics.json").read_text())
    assert info["kept_weights"] == summary["kept_weights"] == "ema"  # this run's EMA wins
    assert info["best_epoch"] == summary["best_epoch"] == epoch
    assert info["best_valid_metric"] == pytest.approx(best) == avg[epoch - 1]
    assert info["raw_valid_metric"] == pytest.approx(raw[epoch - 1]) != pytest.approx(best)
    assert summary["ema_valid_log_loss"] == pytest.approx(best)
    oof = read_preds(out / "plain", "oof", info["classes"])
    labels = pd.read_csv("data/prepared/train.csv").set_index("id").loc[oof.index, "label"]
    targets = np.array([info["classes"].index(c) for c in labels])
    probs = oof.to_numpy()
    assert metrics.value("log_loss", probs, targets) == pytest.approx(best, abs=1e-4)
    curves = report.run_curves("teacher", "resnet10t", 0, live)  # the plots page's data
    assert curves["ema_valid_metric"].tolist() == pytest.approx(avg.tolist())
    assert set(curves["kept_weights"]) == {"ema"}
    assert report.teacher_student(curves, {})["score"].tolist() == pytest.approx([best])
    lines = report.notes({"metric": "log_loss", "cv": 1.0, "submitted": "teachers"},
                         {"curves": curves, "lr_find": curves})  # fmt: skip
    assert "EMA of the weights (train.ema): dashed in the valid metric chart; kept in 1 of 1" in (
        "\n".join(lines)
    )


def test_a_killed_run_with_ema_and_mixing_resumes_to_the_same_average(workdir, monkeypatch):
    over = {**EMA_RUN, "augment": {"clean_epochs": 1, "mixup": 0.4, "cutmix": 1.0}}
    over["pseudo"] = {"epochs": 2}  # clean_epochs 1 needs 2 student epochs to validate
    p = parse_params(tiny_params(over))
    interrupted_after_first_epoch(p, monkeypatch)
    shutil.rmtree("dvclive")  # as `dvc repro` removes the stage's outputs
    train.run(p, "resnet10t", 0)
    clean = workdir / "clean"
    write_prepared(clean)
    monkeypatch.chdir(clean)
    train.run(p, "resnet10t", 0)
    for name in ("model.safetensors", "model.json"):
        a, b = workdir / "models/resnet10t/fold0" / name, clean / "models/resnet10t/fold0" / name
        if name.endswith(".json"):
            assert json.loads(a.read_text()) == json.loads(b.read_text())
        else:
            wa, wb = load_file(str(a)), load_file(str(b))
            assert all(torch.equal(wa[k], wb[k]) for k in wb)
    for curve in ("ema_valid_log_loss", "train_loss"):  # the average after every epoch, mixed
        tsv = Path("dvclive/resnet10t/fold0/plots/metrics") / f"{curve}.tsv"
        resumed = pd.read_csv(workdir / tsv, sep="\t")[curve]
        assert resumed.tolist() == pd.read_csv(clean / tsv, sep="\t")[curve].tolist()


def test_a_precomputed_head_is_neither_mixed_nor_without_its_average(workdir, monkeypatch):
    """head.precompute trains the classifier on features computed once: no batch of it is mixed
    (the full phase's are), and the EMA's classifier is validated on those features too."""
    file = workdir / "init.safetensors"
    src = timm.create_model("resnet10t", num_classes=3)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(file))
    mixed_epochs, real = [], BatchMix.__call__
    monkeypatch.setattr(
        BatchMix, "__call__", lambda self, b, e, t: mixed_epochs.append(e) or real(self, b, e, t)
    )
    over = {
        "model": {"pretrained": str(file)},
        "head": {"epochs": 1, "lr": 0.01, "precompute": True},
        "train": {"epochs": 1, "ema": 0.9},
        "augment": {"mixup": 0.4},
    }
    train.run(parse_params(tiny_params(over)), "resnet10t", 0)
    assert mixed_epochs and set(mixed_epochs) == {1}  # the full phase's batches, every one
    tsv = workdir / "dvclive/resnet10t/fold0/plots/metrics/ema_valid_accuracy.tsv"
    assert len(pd.read_csv(tsv, sep="\t")) == 2  # the head epoch and the full one

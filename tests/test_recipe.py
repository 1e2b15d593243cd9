"""The training recipe: scheduled augmentation, flips by domain, progressive resizing, a batch
size that adapts to the data, and defaults that train a tiny competition."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from accelerate import Accelerator
from sklearn.datasets import load_digits

from benchmarks.competitions import write_binary
from pipeline import batches, schedules
from pipeline.loop import LoopConfig, Phase, fit
from pipeline.params import Augment, LrFind, load_params, parse_params
from pipeline.preds import has_preds, read_probs
from pipeline.stages import folds, predict, prepare, train
from pipeline.transforms import build_transforms, epoch_strength
from tests.conftest import ROOT, tiny_params

ZERO = {"mean": (0.0, 0.0, 0.0), "std": (1 / 255, 1 / 255, 1 / 255)}  # output = input pixels


def augment(**over) -> Augment:
    return load_params(ROOT / "params.yaml").augment.model_copy(update=over)


def digits(n: int = 40) -> np.ndarray:
    """Real 8x8 digits as 32 px RGB uint8: asymmetric, so every flip changes them."""
    d = load_digits().images[:n] * (255 / 16)
    big = np.kron(d, np.ones((4, 4))).round().astype(np.uint8)
    return np.repeat(big[..., None], 3, axis=3)


def change(aug: Augment, s: float, images: np.ndarray, seed: int = 0) -> float:
    """Mean absolute pixel change the transforms at strength s make to the images."""
    tf = build_transforms("train", s, aug, **ZERO, seed=seed)
    out = np.stack([tf(image=img)["image"].permute(1, 2, 0).numpy() for img in images])
    return float(np.abs(out - images.astype(np.float32)).mean())


EVERYTHING = dict(
    rotate=20.0, shift=0.15, scale=0.2, brightness=0.3, hue=0.1, saturation=0.3, blur=1.5,
    noise=0.1, cutout=0.3,
)  # fmt: skip


def test_pixel_change_grows_with_strength_and_is_zero_when_clean():
    aug, imgs = augment(**EVERYTHING), digits()
    changes = [change(aug, s, imgs) for s in (0.0, 0.25, 0.5, 1.0)]
    assert changes[0] < 1e-3  # s = 0: the image untouched (up to float rounding)
    assert changes[1] < changes[2] < changes[3]
    # the schedule's clean epochs reach the transform as strength 0
    sched = augment(**EVERYTHING, clean_epochs=2, clean_strength=0.0)
    strengths = [epoch_strength(sched, e, 6) for e in range(6)]
    assert strengths[:4] == sorted(strengths[:4]) and strengths[3] == pytest.approx(1.0)
    assert strengths[4:] == [0.0, 0.0]
    assert change(sched, strengths[-1], imgs) < 1e-3
    assert change(sched, strengths[0], imgs) > 1.0


@pytest.mark.parametrize("name", ["rotate", "brightness", "hue", "blur", "noise", "cutout"])
def test_every_magnitude_reaches_the_image(name):
    off = {k: 0.0 for k in EVERYTHING}
    imgs = digits(20)
    if name == "hue":  # hue needs colour: tint the digits
        imgs = (imgs * np.array([1.0, 0.6, 0.2])).astype(np.uint8)
    aug = augment(**{**off, name: EVERYTHING[name]})
    assert change(aug, 0.3, imgs) < change(aug, 1.0, imgs)
    assert change(augment(**off), 1.0, imgs) < 1e-3  # every magnitude 0: nothing happens


def outputs(aug: Augment, img: np.ndarray, n: int = 40) -> list[np.ndarray]:
    tf = build_transforms("train", 1.0, aug, **ZERO, seed=3)
    return [tf(image=img)["image"].permute(1, 2, 0).numpy().astype(np.uint8) for _ in range(n)]


def seen(outs: list[np.ndarray], img: np.ndarray) -> set[str]:
    forms = {
        "identity": img, "hflip": img[:, ::-1], "vflip": img[::-1], "rot90": np.rot90(img),
        "transpose": img.transpose(1, 0, 2),
    }  # fmt: skip
    return {k for k, f in forms.items() if any(np.array_equal(o, f) for o in outs)}


@pytest.mark.parametrize(
    ("flips", "expected"),
    [
        ("none", {"identity"}),
        ("horizontal", {"identity", "hflip"}),
        ("all", {"identity", "hflip", "vflip", "rot90", "transpose"}),
    ],
)
def test_flips_follow_the_domain(flips, expected):
    off = {k: 0.0 for k in EVERYTHING}
    img = digits(1)[0]
    assert seen(outputs(augment(**off, flips=flips), img), img) == expected


def test_ramps_rise_from_start_to_end_then_finish_clean():
    lin = [schedules.augment_strength(e, 7, "linear", 0.2, 1.0, 2, 0.1) for e in range(7)]
    cos = [schedules.augment_strength(e, 7, "cosine", 0.2, 1.0, 2, 0.1) for e in range(7)]
    assert lin[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0]) and lin[5:] == [0.1, 0.1]
    assert cos[0] == pytest.approx(0.2) and cos[4] == pytest.approx(1.0)
    assert cos[2] == pytest.approx(0.6) and cos[1] < lin[1]  # soft start, same middle
    assert cos[5:] == [0.1, 0.1]


class AnySize(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4, 3)
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[-1])
        return self.fc(self.conv(x).mean((2, 3)))


def test_lr_schedule_over_progressive_resizing_is_continuous_and_ends_at_its_floor(tmp_path):
    torch.manual_seed(0)
    sizes, epochs, n, batch = [8, 12, 16], 6, 40, 8
    net, y = AnySize(), torch.arange(n) % 3

    def loader(epoch: int, total: int):
        size = batches.epoch_size(sizes, epoch, total)
        x = torch.rand(n, 3, size, size)
        return torch.utils.data.DataLoader(list(zip(x, y, strict=True)), batch_size=batch)

    x_valid = torch.rand(6, 3, 16, 16)
    valid = torch.utils.data.DataLoader(list(zip(x_valid, y[:6], strict=True)), batch_size=6)
    groups = [{"name": "all", "params": list(net.parameters()), "lr": 0.01, "weight_decay": 0}]
    phase = Phase("full", epochs, net, groups, loader, valid)
    cfg = LoopConfig("single_label", 0.25, 25.0, 1e4, 1, 2, 0.0,
                     LrFind(start=1e-7, end=1.0, steps=3, suggestion="valley"), "k")  # fmt: skip
    hist = fit(net, [phase], cfg, lambda p, t: 0.0, Accelerator(cpu=True), tmp_path / "c.pt",
               lambda r: None, lambda m, r: None)  # fmt: skip
    lrs = [lr for row in hist.rows for lr in row["step_lrs"]]
    total = epochs * (n // batch)
    assert len(lrs) == total
    want = [schedules.one_cycle_lr(s, total, 0.01, 0.25, 25.0, 1e4) for s in range(total)]
    assert lrs == pytest.approx(want)  # one schedule across the size changes: no restart, no jump
    assert max(abs(a - b) for a, b in zip(lrs, lrs[1:], strict=False)) < 0.01 / 4
    assert lrs[-1] == pytest.approx(0.01 / 1e4)
    assert {8, 12} <= set(net.sizes)  # trained at the small sizes; validated at 16


def test_epochs_split_evenly_over_the_sizes():
    assert [batches.epoch_size([24, 32], e, 6) for e in range(6)] == [24] * 3 + [32] * 3
    assert [batches.epoch_size([16, 24, 32], e, 4) for e in range(4)] == [16, 16, 24, 32]
    assert batches.epoch_size([32], 5, 6) == 32


def test_batch_size_auto_gives_enough_steps_per_epoch_and_in_all():
    assert batches.batch_size("auto", 2000, epochs=10) == 64  # 31 steps of 64
    assert batches.batch_size("auto", 920) == 56  # 16 steps of 56 an epoch, not 14 of 64
    assert batches.batch_size("auto", 920, epochs=10) == 40  # 23 steps, 230 in all
    assert batches.batch_size("auto", 480, epochs=10) == 24  # 20 steps of 24, 200 in all
    assert batches.batch_size("auto", 80, epochs=10) == 8  # a tiny competition: never below 8
    assert batches.batch_size(48, 80) == 48
    # a student's epoch passes over the labeled rows; pseudolabels top up every batch
    assert batches.batch_size("auto", 920, ratio=3) == 64  # 19 steps of 48 labeled + 16 pseudo
    assert batches.batch_size("auto", 600, ratio=3) == 48  # 16 steps of 36 + 12
    assert batches.batch_size("auto", 920, ratio=2) == 64  # 43 labeled + 21 pseudo: 21 steps
    assert batches.batch_size("auto", 920, ratio=3, epochs=3) == 16  # from scratch: 76 x 3 steps
    assert batches.batch_size(48, 920, ratio=3) == 48


def test_sizes_must_end_at_the_input_size():
    with pytest.raises(Exception, match="train.sizes ends at 24 but base.image_size is 16"):
        parse_params(tiny_params({"train": {"sizes": [12, 24]}}))
    with pytest.raises(Exception, match="augment.clean_epochs"):
        parse_params(tiny_params({"augment": {"clean_epochs": 1}}))


def test_too_few_steps_warn_naming_batch_size_and_epochs(workdir, capsys):
    train.run(parse_params(tiny_params({"train": {"batch_size": "auto"}})), "resnet10t", 0)
    out = capsys.readouterr().out
    assert "train.batch_size: auto -> 8 for 24 training rows" in out
    assert "warning: 3 optimizer steps in all" in out
    assert "raise train.epochs or lower train.batch_size" in out


def test_tiny_two_class_competition_trains_with_default_params(tmp_path, monkeypatch, capsys):
    """100 training images of digits 3 and 8, params.yaml as shipped: folds 0 and 1 of five."""
    monkeypatch.chdir(tmp_path)
    write_binary(tmp_path / "data" / "raw", seed=0)
    p = load_params(ROOT / "params.yaml")
    comp = p.competition.model_copy(update={"source": "path", "path": "data/raw"})
    prepare.run(p.prepare, comp)
    folds.run(p.base.seed, len(p.base.folds))
    p = p.model_copy(update={"competition": comp})
    scores = []
    for k in (0, 1):
        train.run(p, "resnet10t", k)
        predict.run(p, "resnet10t", k)
        tta = json.loads((tmp_path / f"preds/resnet10t/fold{k}/tta.json").read_text())
        scores.append(tta["oof_plain"])
    out = capsys.readouterr().out
    assert "train.batch_size: auto -> 8 for 80 training rows" in out
    print(f"tiny two-class CV accuracy, folds 0 and 1: {scores}")
    assert np.mean(scores) >= 0.9, scores  # chance is 0.5; batch 64 (1 step an epoch) gets 0.7


def test_predict_keeps_every_view_and_random_draws_of_the_training_augmentation(workdir):
    tta = {"views": ["hflip", "zoom"], "random": 2, "random_strength": 0.5, "beta": 0.25}
    p = parse_params(tiny_params({"tta": tta}))
    train.run(p, "resnet10t", 0)
    predict.run(p, "resnet10t", 0)
    out = workdir / "preds/resnet10t/fold0"
    npz = np.load(out / "views.npz")
    views = ["plain", "hflip", "zoom", "random0", "random1"]
    assert sorted(npz.files) == sorted(f"{s}/{v}" for s in ("oof", "test") for v in views)
    assert not np.allclose(npz["oof/random0"], npz["oof/random1"])  # two different draws
    classes = json.loads((workdir / "models/resnet10t/fold0/model.json").read_text())["classes"]
    oof = read_probs(out, "oof", classes)[1]
    plain = read_probs(out, "oof_plain", classes)[1]
    np.testing.assert_allclose(plain, npz["oof/plain"], atol=1e-6)
    mean_views = np.mean([npz[f"oof/{v}"] for v in views[1:]], 0)
    np.testing.assert_allclose(oof, 0.25 * plain + 0.75 * mean_views, atol=1e-6)
    assert json.loads((out / "tta.json").read_text())["beta"] == 0.25


def test_predict_without_tta_takes_the_train_stages_plain_predictions_without_torch(workdir):
    """No view and no draw: predict reads models/…/plain/ (snapshots too) instead of running the
    model, and writes what running the model gives."""
    over = {"train": {"schedule": "sgdr", "epochs": 3}, "tta": {"views": [], "beta": "auto"}}
    p = parse_params(tiny_params(over))
    train.run(p, "resnet10t", 0)
    src = workdir / "models/resnet10t/fold0"
    assert has_preds(src / "plain", "oof") and has_preds(src / "plain/snapshots/cycle1", "test")
    (workdir / "params.yaml").write_text(yaml.safe_dump(tiny_params(over)))
    stage = "main(['predict', '--model', 'resnet10t', '--fold', '0'])"
    code = f"import sys; from pipeline.__main__ import main; {stage}; print(sorted(sys.modules))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", code], cwd=workdir, env=env, capture_output=True,
                         text=True, check=True)  # fmt: skip
    assert "'torch'" not in res.stdout.splitlines()[-1]  # no model, no torch
    light = workdir / "preds/resnet10t/fold0"
    files = sorted(str(f.relative_to(light)) for f in light.rglob("*.csv"))
    shutil.move(light, workdir / "light")
    shutil.rmtree(src / "plain")  # now predict has to run the model
    predict.run(p, "resnet10t", 0)
    assert sorted(str(f.relative_to(light)) for f in light.rglob("*.csv")) == files
    for name in files:
        a = pd.read_csv(workdir / "light" / name).set_index("id")
        b = pd.read_csv(light / name).set_index("id")
        assert list(a.index) == list(b.index)
        np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), atol=1e-5)
    report = json.loads((light / "tta.json").read_text())
    assert report["beta"] == 1.0 and report == json.loads((workdir / "light/tta.json").read_text())

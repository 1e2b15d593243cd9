"""Random-resized crops from a cache larger than the input, the eval centre crop, photos that are
not square (prepare.resize), gradient accumulation and stochastic depth (issue 21, items 4-5)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
from accelerate import Accelerator
from PIL import Image
from timm.layers import DropPath

from pipeline import batches, model, record, roles, schedules, specs
from pipeline.data import split_dataset
from pipeline.files import PipelineError
from pipeline.index import Index, read_index, resize, square
from pipeline.inference import predict_split
from pipeline.loop import Criterion, LoopConfig, Phase, accumulate, batch_loss, fit, lr_range_test
from pipeline.params import LrFind, Prepare, load_params
from pipeline.stages import prepare
from pipeline.transforms import (
    ResizedCrop,
    Transform,
    build_transforms,
    centre_box,
    crop_jitter,
    cut,
)
from tests import test_bad_input as matrix
from tests.conftest import ROOT, write_csv_competition
from tests.layout_fixtures import competition
from tests.test_bad_input import Case

ZERO = {"mean": (0.0, 0.0, 0.0), "std": (1 / 255, 1 / 255, 1 / 255)}  # output = input pixels
QUARTERS = (10, 50, 200, 250)


def quarters(w: int = 40, h: int = 16) -> np.ndarray:
    """An RGB image w wide, h high, in four vertical bands of 10, 50, 200 and 250."""
    img = np.zeros((h, w, 3), np.uint8)
    for k, v in enumerate(QUARTERS):
        img[:, k * w // 4 : (k + 1) * w // 4] = v
    return img


def pixels(tf: Transform, img: np.ndarray, size: int | None = None) -> np.ndarray:
    return tf(image=img, size=size)["image"].permute(1, 2, 0).numpy()


# --- prepare.resize: squish | crop | pad -----------------------------------------------------

SQUISHED = [10, 10, 30, 50, 50, 200, 200, 225, 250, 250]  # 4 source columns an output column


def expected(mode: str) -> np.ndarray:
    """A 40 x 16 quarters image at 10 px (area averaging: exact numbers)."""
    row = {"squish": SQUISHED, "crop": [50] * 5 + [200] * 5, "pad": SQUISHED}[mode]
    out = np.repeat(np.array(row, np.uint8)[None, :, None], 10, 0).repeat(3, 2)
    if mode == "pad":  # 16 rows of 40, centred: rows 12-27 of the square, 3-6 of the 10
        out[:3], out[7:] = 0, 0
    return out


@pytest.mark.parametrize("mode", ["squish", "crop", "pad"])
def test_each_resize_mode_on_a_wide_photo(mode):
    assert np.array_equal(resize(quarters(), 10, mode), expected(mode))
    tall = resize(quarters().transpose(1, 0, 2), 10, mode)  # the same photo held upright
    assert np.array_equal(tall, expected(mode).transpose(1, 0, 2))


def test_square_keeps_pixels_and_pads_black_with_the_odd_pixel_last():
    img = quarters(40, 15)
    padded = square(img, "pad")
    assert padded.shape == (40, 40, 3)
    assert (padded[:12] == 0).all() and (padded[27:] == 0).all()  # 12 bars above, 13 below
    assert np.array_equal(padded[12:27], img)
    cropped = square(img, "crop")
    assert cropped.shape == (15, 15, 3) and np.array_equal(cropped, img[:, 12:27])
    assert square(img, "squish") is img and square(padded, "crop") is padded


@pytest.mark.parametrize("mode", ["squish", "crop", "pad"])
def test_prepare_caches_each_mode_and_files_are_read_the_same_way(mode, tmp_path):
    raw = write_csv_competition(tmp_path / "raw", n_train=6, n_test=3)
    for png in [*raw.glob("train/*.png"), *raw.glob("test/*.png")]:
        Image.fromarray(quarters()).save(png)
    cached, files = tmp_path / "cached", tmp_path / "files"
    prepare.run(Prepare(cache_size=10, resize=mode), competition(), raw=raw, out=cached)
    prepare.run(Prepare(cache_size=None, resize=mode), competition(), raw=raw, out=files)
    index = read_index(cached)
    assert index.meta["resize"] == mode and index.meta["cache_size"] == 10
    assert all(np.array_equal(img, expected(mode)) for img in index.images("train"))
    tf = build_transforms("valid", 0, None, **ZERO)
    decoded = split_dataset(read_index(files), "test", np.arange(3), tf, 10)
    for x, _ in decoded:  # no cache: each file made square by the same mode, then resized
        assert np.allclose(x.permute(1, 2, 0).numpy(), expected(mode), atol=1e-3)


def test_changing_prepare_resize_rebuilds_the_cache(project):
    """prepare's params are its whole section: a new mode reruns it (and what follows)."""
    project.run(["dvc", "repro", "prepare"])
    assert "prepare" not in project.changed()
    project.set_params({"prepare": {"resize": "pad"}})
    assert "prepare" in project.changed()


# --- random-resized crops (training) and the centre crop (validation, prediction) -----------


def test_random_resized_crops_stay_within_their_ranges():
    crop = ResizedCrop((0.35, 1.0), (0.75, 4 / 3), seed=0)
    boxes = np.array([crop.box() for _ in range(3000)])
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 1 + 1e-12).all() and (left + w <= 1 + 1e-12).all()
    area, ratio = h * w, w / h
    assert area.min() >= 0.35 - 1e-9 and area.max() <= 1 + 1e-9
    assert ratio.min() >= 0.75 - 1e-9 and ratio.max() <= 4 / 3 + 1e-9
    assert area.min() < 0.37 and ratio.min() < 0.76 and ratio.max() > 1.32  # the ranges, filled
    assert abs(np.log(ratio).mean()) < 0.02  # log-uniform about 1


def test_crop_ranges_narrow_with_the_strength_and_vanish_at_zero():
    aug = load_params(ROOT / "params.yaml").augment.model_copy(
        update={"crop_scale": [0.36, 1.0], "crop_ratio": [0.5, 2.0]}
    )
    half = crop_jitter(aug, 0.5, 0)
    assert half.scale == pytest.approx((0.68, 1.0))
    assert [math.exp(r) for r in half.log_ratio] == pytest.approx([0.5**0.5, 2**0.5])
    still = crop_jitter(aug, 0.0, 0)
    assert {still.box() for _ in range(50)} == {(0.0, 0.0, 1.0, 1.0)}  # the whole image
    img = quarters(32, 32)
    clean = build_transforms("train", 0.0, aug, **ZERO, seed=1)  # a clean epoch: no crop
    assert np.allclose(pixels(clean, img, 32), img, atol=1e-3)
    off = aug.model_copy(update={"crop_scale": [1.0, 1.0], "crop_ratio": [1.0, 1.0]})
    assert crop_jitter(off, 1.0, 0) == 1.0


def test_a_training_crop_is_the_drawn_box_resized_and_repeats_with_its_seed():
    aug = load_params(ROOT / "params.yaml").augment.model_copy(
        update={"crop_scale": [0.35, 1.0], "crop_ratio": [0.75, 4 / 3], "rotate": 0.0,
                "shift": 0.0, "scale": 0.0, "brightness": 0.0}
    )  # fmt: skip
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)  # a cache twice the input
    tf = build_transforms("train", 1.0, aug, **ZERO, seed=7)
    twin = ResizedCrop((0.35, 1.0), (0.75, 4 / 3), seed=7)
    for _ in range(5):
        want = resize(cut(img, twin.box()), 32)
        assert np.allclose(pixels(tf, img, 32), want, atol=1e-3)
    tf.set_random_seed(11)
    first = pixels(tf, img, 32)
    tf.set_random_seed(11)
    assert np.array_equal(pixels(tf, img, 32), first)


def test_eval_takes_the_central_crop_pct_of_the_image():
    img = np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)
    tf = build_transforms("valid", 0, None, **ZERO, crop_pct=0.5)
    assert centre_box(0.5) == (0.25, 0.25, 0.5, 0.5)
    assert np.allclose(pixels(tf, img, 8), img[4:12, 4:12], atol=1e-3)  # 8 px of 16: no resample
    whole = build_transforms("valid", 0, None, **ZERO)  # crop_pct 1: today's input exactly
    assert np.allclose(pixels(whole, img, 16), img, atol=1e-3)
    assert np.allclose(pixels(whole, img, 8), resize(img, 8), atol=1e-3)


class Brightness(torch.nn.Module):
    """Logits [mean input / 255, 0]: its probabilities say what share of the input was lit."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean((1, 2, 3)) / 255
        return torch.stack([m, torch.zeros_like(m)], 1)


def test_prediction_and_tta_see_the_centre_crop_recorded_in_model_json(tmp_path):
    """A 16 px cache lit only in its central 8 x 8, an 8 px input: crop_pct 0.5 sees all of it
    lit, 1.0 a quarter (area averaging); the TTA views start from the same crop."""
    cache = np.zeros((2, 16, 16, 3), np.uint8)
    cache[:, 4:12, 4:12] = 255
    np.save(tmp_path / "train_images.npy", cache)
    frame = pd.DataFrame({"id": ["a", "b"], "path": ["a.png", "b.png"], "label": ["x", "y"]})
    index = Index(frame, frame, {"task": "single_label", "classes": ["x", "y"]}, tmp_path)
    info = {"image_size": 8, "task": "single_label", **{k: list(v) for k, v in ZERO.items()}}
    tta = record.NO_TTA.model_copy(update={"views": ["hflip", "rot90s"]})
    cpu = torch.device("cpu")
    for pct, lit in ((0.5, 1.0), (1.0, 0.25), (None, 0.25)):  # None: a model.json without it
        with_pct = info if pct is None else {**info, "crop_pct": pct}
        outs = predict_split(Brightness(), index, "train", np.arange(2), tta, with_pct, cpu)
        want = torch.tensor([lit, 0.0]).softmax(0).numpy()
        for view in ("plain", "hflip", "rot90s"):
            assert np.allclose(outs[view], want, atol=1e-5), (pct, view)


# --- gradient accumulation ---------------------------------------------------------------


def tiny_net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)  # no BatchNorm: a batch's gradient is the mean of its items'
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(64, 3)
    )


def steps_of(net: torch.nn.Module, batches: list, k: int) -> list[torch.Tensor]:
    """The weights after each optimizer step, the batches going through loop.accumulate (SGD,
    lr 1: a step moves the weights by minus the gradient)."""
    acc, loss_fn = Accelerator(cpu=True), Criterion("single_label", None, 0.0)
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    after = []
    for i, batch in enumerate(batches):
        loss = batch_loss(net, batch, loss_fn, acc)
        if accumulate(net, opt, loss, i, len(batches), k, acc):
            after.append(torch.cat([p.detach().flatten().clone() for p in net.parameters()]))
    return after


def test_accumulating_k_batches_is_one_batch_k_times_larger():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 3, 6, 6, generator=g), torch.randint(0, 3, (40,), generator=g)
    small = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 40, 8)]  # 5 batches of 8
    # k = 3: a step on batches 1-3 (24 images), then the epoch's rest, batches 4-5 (16 images)
    big = [(x[:24], y[:24]), (x[24:], y[24:])]
    stepped = steps_of(tiny_net(), small, 3)
    once = steps_of(tiny_net(), big, 1)
    assert len(stepped) == 2
    for a, b in zip(stepped, once, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    start = torch.cat([p.detach().flatten() for p in tiny_net().parameters()])
    assert (stepped[0] - start).abs().max() > 1e-3  # the steps moved the weights
    assert not torch.allclose(steps_of(tiny_net(), small, 1)[0], stepped[0])  # k = 1: 8 images


class Counting(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.calls = torch.nn.Linear(12, 3), 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fc(x.flatten(1))


def test_schedules_and_the_lr_range_test_count_optimizer_steps(tmp_path):
    torch.manual_seed(0)
    net, n, batch, epochs, k = Counting(), 40, 8, 4, 3  # 5 batches: 2 steps an epoch
    x, y = torch.rand(n, 3, 2, 2), torch.arange(n) % 3
    data = torch.utils.data.DataLoader(list(zip(x, y, strict=True)), batch_size=batch)
    groups = [{"name": "all", "params": list(net.parameters()), "lr": 0.01, "weight_decay": 0}]
    phase = Phase("full", epochs, net, groups, lambda e, t: data, data)
    lf = LrFind(start=1e-6, end=1e-3, steps=4, suggestion="valley")
    cfg = LoopConfig("single_label", 0.25, 25.0, 1e4, 1, 2, 0.0, lf, "k", accumulate=k)
    hist = fit(net, [phase], cfg, lambda p, t: 0.0, Accelerator(cpu=True), tmp_path / "c.pt",
               lambda r: None, lambda m, r: None)  # fmt: skip
    lrs = [lr for row in hist.rows for lr in row["step_lrs"]]
    total = epochs * 2
    assert lrs == pytest.approx([schedules.one_cycle_lr(s, total, 0.01, 0.25, 25.0, 1e4)
                                 for s in range(total)])  # fmt: skip
    net.calls = 0
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    acc = Accelerator(cpu=True)
    lrs, _ = lr_range_test(phase, net, opt, Criterion("single_label", None, 0.0), acc, lf, k=k)
    assert len(lrs) == 4 and net.calls == 4 * k  # each LR is one step of k batches


def test_batch_size_auto_and_the_warning_count_optimizer_steps(capsys):
    assert batches.epoch_steps(920, 40) == 23 and batches.epoch_steps(920, 40, accumulate=2) == 12
    assert (
        batches.epoch_steps(920, 40, accumulate=23) == 1
        and batches.epoch_steps(920, 40, None, 5) == 5
    )
    assert batches.batch_size("auto", 920, epochs=10) == 40  # 23 steps an epoch, 230 in all
    assert batches.batch_size("auto", 920, epochs=10, accumulate=2) == 16  # 29 steps, 290 in all
    assert batches.batch_size(48, 920, accumulate=4) == 48
    d = batches.FoldData(None, "single_label", np.arange(920), np.arange(0), np.zeros(920, int),
                       32, [32], 40, {}, 0, False)  # fmt: skip
    teacher = specs.Spec(roles.TEACHER, 0, 10, 0.004)
    batches.check_steps(teacher, d, Accelerator(cpu=True), 2)
    assert (
        "warning: 120 optimizer steps in all (12 per epoch at batch 40, 2 batches a step for 920 "
        "rows); under 200 a model rarely converges: raise train.epochs or lower "
        "train.batch_size or train.accumulate"
    ) in capsys.readouterr().out


# --- stochastic depth ----------------------------------------------------------------------


def test_drop_path_rate_reaches_timms_model():
    net = model.create("test_resnet", 3, False, 0.0, 0.2)
    probs = [m.drop_prob for m in net.modules() if isinstance(m, DropPath)]
    assert probs and max(probs) == pytest.approx(0.2)  # timm's: rising with depth up to the rate
    assert probs == sorted(probs)
    plain = model.create("test_resnet", 3, False, 0.0)
    assert not any(isinstance(m, DropPath) for m in plain.modules())
    assert plain.state_dict().keys() == net.state_dict().keys()  # predict loads it without


def test_a_backbone_without_stochastic_depth_is_refused_by_name():
    with pytest.raises(PipelineError, match=r"model\.drop_path_rate: ghostnet_050 has no"):
        model.create("ghostnet_050", 3, False, 0.0, 0.1)
    assert model.create("ghostnet_050", 3, False, 0.0, 0.0) is not None  # 0: built as before
    with pytest.raises(PipelineError, match=r"model\.drop_path_rate: linear has no"):
        model.check_drop_path(torch.nn.Linear(2, 2), "linear", 0.1)  # a key taken and ignored


# --- defaults are today's behaviour ----------------------------------------------------------


def test_the_defaults_change_nothing():
    p = load_params(ROOT / "params.yaml")
    assert (p.prepare.resize, p.base.crop_pct, p.train.accumulate) == ("squish", 1.0, 1)
    assert p.model.drop_path_rate == 0.0 and crop_jitter(p.augment, 1.0, 0) == 1.0
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    for s in (0.0, 0.5, 1.0):  # the size step of a 32 px cache at 32 px is the identity
        a = build_transforms("train", s, p.augment, **ZERO, seed=3)
        b = copy.deepcopy(a)
        assert np.array_equal(pixels(a, img, 32), pixels(b, img))


# --- refused params --------------------------------------------------------------------------


def params(over: dict):
    return lambda raw: over


DROP_PATH = ("train", "--model", "ghostnet_050", "--fold", "0")
CASES = [
    Case("crop_scale reversed", params({"augment": {"crop_scale": [1.0, 0.35]}}),
         r"key 'augment\.crop_scale': must be \[min, max\] with min <= max.*\[0\.35, 1\.0\]"),
    Case("crop_ratio of one number", params({"augment": {"crop_ratio": [0.75]}}),
         r"key 'augment\.crop_ratio': must be \[min, max\].*\[0\.75, 1\.333\]"),
    Case("crop_scale above 1", params({"augment": {"crop_scale": [0.5, 1.5]}}),
         r"key 'augment\.crop_scale\.1': .*less than or equal to 1"),
    Case("crop_pct of 0", params({"base": {"crop_pct": 0.0}}), r"key 'base\.crop_pct'"),
    Case("unknown resize mode", params({"prepare": {"resize": "stretch"}}),
         r"key 'prepare\.resize': .*'squish', 'crop' or 'pad'"),
    Case("accumulate of 0", params({"train": {"accumulate": 0}}), r"key 'train\.accumulate'"),
    Case("drop_path_rate of 1", params({"model": {"drop_path_rate": 1.0}}),
         r"key 'model\.drop_path_rate'.*less than 1"),
    Case("drop_path_rate on a backbone without it",
         params({"train": {"backbones": ["ghostnet_050"]}, "model": {"drop_path_rate": 0.1}}),
         r"model\.drop_path_rate: ghostnet_050 has no stochastic depth.*drop_path_rate: 0",
         argv=DROP_PATH, before=("prepare", "folds"), output="models"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_params_are_refused_by_name(case: Case, tmp_path, monkeypatch, capsys):
    matrix.test_bad_input(case, tmp_path, monkeypatch, capsys)  # exit 1, one line, nothing written

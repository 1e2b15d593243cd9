"""What competitors read after training: the learning-curve verdict and the model summary."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pipeline import curves
from pipeline.params import parse_params
from pipeline.preds import write_preds
from pipeline.stages import train
from tests.conftest import tiny_params


@pytest.mark.parametrize(
    ("valid_loss", "expected"),
    [
        ([1.0, 0.7, 0.5, 0.4, 0.33, 0.28, 0.24, 0.21], curves.UNDER),  # still falling fast
        ([1.0, 0.6, 0.4, 0.35, 0.42, 0.5, 0.58, 0.66], curves.OVER),  # rises steadily after 0.35
        ([1.0, 0.5, 0.3, 0.45, 0.32, 0.5, 0.36, 0.55], curves.OSCILLATING),  # up, down, ends high
        ([1.0, 0.5, 0.3, 0.25, 0.23, 0.225, 0.224, 0.226], curves.GOOD),  # flattened at its best
        ([2.3, 0.2, 0.03, 0.012, 0.010, 0.011, 0.012, 0.012], curves.GOOD),  # +0.002: noise
        ([2.3, 0.2, 0.03, 0.02, 0.018, 0.016, 0.013, 0.011], curves.GOOD),  # -0.007: noise
    ],
    ids=["under-fitting", "over-fitting", "oscillating", "good fit", "tiny rise", "tiny fall"],
)
def test_verdict_rules_on_hand_made_curves(valid_loss, expected):
    assert curves.verdict(valid_loss) == expected


def test_turns_count_changes_of_direction_only():
    assert curves.turns([1, 2, 3, 2, 2, 3]) == 2
    assert curves.turns([3, 2, 1, 1]) == 0


def test_training_writes_the_verdict_and_a_model_summary(workdir):
    p = parse_params(tiny_params({"head": {"epochs": 1}, "train": {"epochs": 2}}))
    train.run(p, "resnet10t", 0)
    out = workdir / "models/resnet10t/fold0"
    info = json.loads((out / "model.json").read_text())
    summary = json.loads((workdir / "dvclive/resnet10t/fold0/metrics.json").read_text())
    assert info["learning_curve"] in (curves.UNDER, curves.OVER, curves.OSCILLATING, curves.GOOD)
    assert summary["learning_curve"] == info["learning_curve"]
    text = (out / "summary.txt").read_text()
    assert "body0" in text and "head" in text and "trains in: head, full" in text
    assert "trainable: " in text and " in head, " in text and " in full" in text
    assert "input: 16 px, batch 8" in text


def test_progress_is_periodic_lines_off_a_terminal_and_silent_off_the_main_process(
    monkeypatch, capsys
):
    from pipeline import progress as prog

    monkeypatch.setattr(prog, "PERIOD", 0.0)  # a line after every item
    assert list(prog.progress(range(3), 3, "decoding", "image")) == [0, 1, 2]
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and err[-1].startswith("decoding: 3/3 image (")
    assert list(prog.progress(range(3), 3, "x", main=False)) == [0, 1, 2]
    assert capsys.readouterr().err == ""


class HalfSighted(torch.nn.Module):
    """Sees only one half of the image (the other is zeroed before the first conv): its
    Grad-CAM must light up that half. Positive weights keep the map from being all zero."""

    feature_info = [{"module": "stage", "num_chs": 8, "reduction": 1}]

    def __init__(self, side: str) -> None:
        super().__init__()
        self.side = side
        self.stage = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.ReLU()
        )
        self.head = torch.nn.Linear(8, 2)
        with torch.no_grad():
            self.stage[0].weight.abs_()
            self.head.weight.abs_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        keep = torch.zeros_like(x)
        keep[..., :half] = 1
        x = x * (keep if self.side == "left" else keep.flip(-1))
        return self.head(self.stage(x).mean((2, 3)))


@pytest.mark.parametrize("side", ["left", "right"])
def test_grad_cam_of_a_model_that_sees_one_half_is_stronger_on_that_half(side):
    from pipeline.stages.diagnose import grad_cam

    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32)
    maps = grad_cam(HalfSighted(side).eval(), x, [0, 1, 0, 1])
    assert maps.shape == (4, 32, 32)
    left, right = maps[..., :16].mean(), maps[..., 16:].mean()
    seen, unseen = (left, right) if side == "left" else (right, left)
    assert seen > 5 * unseen, (left, right)


def test_diagnose_writes_readable_grids_of_the_expected_size(workdir):
    from pipeline.stages import diagnose

    cache = np.load(workdir / "data/prepared/train_images.npy")
    index = pd.read_csv(workdir / "data/prepared/train.csv")
    for path, img in zip(index["path"], cache, strict=True):  # the originals prepare decoded
        (workdir / path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(workdir / path)
    raw = tiny_params({"diagnose": {"per_class": 2, "top_losses": 5, "size": 96}})
    raw["pseudo"]["enabled"] = False
    p = parse_params(raw)
    train.run(p, "resnet10t", 0)
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), len(index))
    write_preds(workdir / "final", "oof", index["id"], probs, ["cat", "dog", "fox"])
    (workdir / "final/thresholds.json").write_text('{"metric": "accuracy", "thresholds": null}')

    report = diagnose.run(p)
    cam = Image.open(workdir / "diagnose/gradcam.png")
    assert cam.size == diagnose.grid_size(3 * 2 * 2, 2 * 2, 96, 1)  # 3 classes x 2 (image, map)
    top = Image.open(workdir / "diagnose/top_losses.png")
    assert top.size == diagnose.grid_size(5, 5, 96, 3)
    truth = index["label"].map({"cat": 0, "dog": 1, "fox": 2}).to_numpy()
    worst = np.argsort(np.log(probs[np.arange(len(probs)), truth]), kind="stable")[:5]
    assert report["top_loss_ids"] == index["id"].iloc[worst].tolist()
    assert report["model"] == "teacher resnet10t fold 0" and report["target_layer"]
    assert len(report["gradcam_ids"]) == 6

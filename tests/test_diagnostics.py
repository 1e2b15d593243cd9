"""What competitors read after training: the learning-curve verdict and the model summary."""

from __future__ import annotations

import json

import pytest

from pipeline import curves
from pipeline.params import parse_params
from pipeline.stages import train
from tests.conftest import tiny_params


@pytest.mark.parametrize(
    ("valid_loss", "expected"),
    [
        ([1.0, 0.7, 0.5, 0.4, 0.33, 0.28, 0.24, 0.21], curves.UNDER),  # still falling fast
        ([1.0, 0.6, 0.4, 0.35, 0.42, 0.5, 0.58, 0.66], curves.OVER),  # rises steadily after 0.35
        ([1.0, 0.5, 0.3, 0.45, 0.32, 0.5, 0.36, 0.55], curves.OSCILLATING),  # up, down, ends high
        ([1.0, 0.5, 0.3, 0.25, 0.23, 0.225, 0.224, 0.226], curves.GOOD),  # flattened at its best
    ],
    ids=["under-fitting", "over-fitting", "oscillating", "good fit"],
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

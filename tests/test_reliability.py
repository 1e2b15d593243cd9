"""Nothing silently wrong: metrics in their natural sign, metrics.json of the kept epoch."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pipeline.params import parse_params
from pipeline.stages import train
from tests.conftest import tiny_params


@pytest.mark.parametrize("metric", ["log_loss", "accuracy"])
def test_training_metrics_keep_their_sign_and_describe_the_kept_epoch(workdir, metric):
    p = parse_params(
        tiny_params({"competition": {"metric": metric}, "train": {"epochs": 4, "lr": 0.02}})
    )
    train.run(p, "resnet10t", 0)
    live = workdir / "dvclive/resnet10t/fold0"
    summary = json.loads((live / "metrics.json").read_text())
    info = json.loads((workdir / "models/resnet10t/fold0/model.json").read_text())
    curve = pd.read_csv(live / "plots/metrics" / f"valid_{metric}.tsv", sep="\t")
    values = curve[f"valid_{metric}"].tolist()
    assert all(v > 0 for v in values)  # a log loss is never printed or stored negative
    best = values.index(min(values) if metric == "log_loss" else max(values))
    assert info["best_epoch"] == summary["best_epoch"] == best + 1
    assert summary[f"valid_{metric}"] == pytest.approx(values[best])
    assert info["best_valid_metric"] == pytest.approx(values[best])
    losses = pd.read_csv(live / "plots/metrics/train_loss.tsv", sep="\t")["train_loss"]
    assert summary["train_loss"] == pytest.approx(losses.iloc[best])
    assert summary["step"] == best

"""Nothing silently wrong: metrics in their natural sign, metrics.json of the kept epoch."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from pipeline import batches, record, roles, specs
from pipeline.params import parse_params
from pipeline.stages import folds, prepare, train
from tests.conftest import tiny_params, write_csv_competition


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


def interrupted_after_first_epoch(p, monkeypatch) -> None:
    """Train, stopped right after epoch 1's checkpoint (as a kill would)."""
    real = record.Recorder.log

    def log(self, row):
        real(self, row)
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(record.Recorder, "log", log)
        with pytest.raises(KeyboardInterrupt):
            train.run(p, "resnet10t", 0)
    assert Path("checkpoints/resnet10t/fold0/state.pt").exists()


def prepared(comp: Path, seed: int) -> None:
    """The csv competition at `comp` with images drawn from `seed`, prepared and folded."""
    shutil.rmtree(comp, ignore_errors=True)
    write_csv_competition(comp, seed=seed)
    p = parse_params(tiny_params({"competition": {"source": "path", "path": str(comp)}}))
    shutil.rmtree("data/raw", ignore_errors=True)
    shutil.copytree(comp, "data/raw")
    prepare.run(p.prepare, p.competition)
    folds.run(p.base.seed, 2)


def test_changed_images_never_resume_a_checkpoint(tmp_path, monkeypatch, capsys):
    """Kill after epoch 1, replace every image (same train.csv), rerun: a fresh start."""
    monkeypatch.chdir(tmp_path)
    prepared(tmp_path / "comp", seed=0)
    p = parse_params(tiny_params({"train": {"epochs": 2}}))
    interrupted_after_first_epoch(p, monkeypatch)
    before = Path("data/prepared/train.csv").read_text()
    prepared(tmp_path / "comp", seed=1)  # every image different, the same ids and labels
    assert Path("data/prepared/train.csv").read_text() == before
    capsys.readouterr()
    train.run(p, "resnet10t", 0)
    out = capsys.readouterr().out
    assert "made with other data; starting afresh" in out
    assert "resuming" not in out.replace("not resuming", "")


def test_a_changed_weights_file_never_resumes_a_checkpoint(workdir, monkeypatch, capsys):
    file = workdir / "init.safetensors"
    src = timm.create_model("resnet10t", num_classes=3)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(file))
    p = parse_params(tiny_params({"model": {"pretrained": str(file)}, "train": {"epochs": 2}}))
    interrupted_after_first_epoch(p, monkeypatch)
    torch.manual_seed(5)
    other = timm.create_model("resnet10t", num_classes=3)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(file))
    capsys.readouterr()
    train.run(p, "resnet10t", 0)
    assert "made with other weights; starting afresh" in capsys.readouterr().out


def test_the_same_inputs_resume(workdir, monkeypatch, capsys):
    p = parse_params(tiny_params({"train": {"epochs": 2}}))
    interrupted_after_first_epoch(p, monkeypatch)
    capsys.readouterr()
    train.run(p, "resnet10t", 0)
    assert "at epoch 2 (epochs 1-1 done)" in capsys.readouterr().out


def whole_pipeline(root: Path, comp: Path) -> None:
    """Every stage in-process, from the raw competition to the submission (2 folds, tiny)."""
    from pipeline.stages import download, ensemble, predict, pseudolabel, submit

    root.mkdir()
    os.chdir(root)
    p = parse_params(tiny_params({"competition": {"source": "path", "path": str(comp)}}))
    download.run(p.competition, p.base.seed)
    prepare.run(p.prepare, p.competition)
    folds.run(p.base.seed, 2)
    for student in (False, True):
        for k in (0, 1):
            train.run(p, "resnet10t", k, student=student)
            predict.run(p, "resnet10t", k, role=roles.STUDENT if student else roles.TEACHER)
        if not student:
            ensemble.run(["resnet10t"], [0, 1], "accuracy", p.ensemble)
            pseudolabel.run(p.pseudo, ["resnet10t"], [0, 1], "accuracy")
    ensemble.run_final(p)
    submit.run("accuracy")


def test_two_runs_give_byte_identical_folds_pseudolabels_and_submission(tmp_path, monkeypatch):
    comp = write_csv_competition(tmp_path / "comp")
    monkeypatch.chdir(tmp_path)
    for run in ("a", "b"):
        whole_pipeline(tmp_path / run, comp)
    for f in ("folds/folds.csv", "pseudo/fold0/labels.csv", "pseudo/fold1/labels.csv",
              "pseudo/fold0/targets.npy", "pseudo/fold1/targets.npy","pseudo/fold0/targets.json",
              "submissions/submission.csv", "final/test.npy", "final/test.json"):  # fmt: skip
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert len(pd.read_csv(tmp_path / "a/pseudo/fold0/labels.csv")) > 0


def test_outputs_follow_the_umask_not_the_temporary_files_private_mode(tmp_path):
    from pipeline.files import UMASK, atomic_dir, write_json

    write_json(tmp_path / "a.json", {})
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "x").write_text("x")
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~UMASK
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~UMASK


def drawn_batches(p, workers: int) -> list[torch.Tensor]:
    from pipeline import model as timm_model
    from pipeline.index import read_index

    p = p.model_copy(update={"train": p.train.model_copy(update={"num_workers": workers})})
    d = batches.fold_data(p, read_index(), timm_model.create("resnet10t", 3, False), 0, None)
    loader = batches.train_loaders(p, specs.teacher_spec(p, "resnet10t"), d, 0)(0, 1)
    return [x for x, _ in loader]


def test_workers_draw_different_augmentations_and_leave_the_weights_alone(workdir):
    """Every training image the same: batches differ only by their augmentation draws."""
    cache = np.load("data/prepared/train_images.npy")
    np.save("data/prepared/train_images.npy", np.repeat(cache[:1], len(cache), axis=0))
    p = parse_params(tiny_params({"augment": {"rotate": 30.0, "cutout": 0.3}}))
    two, none = drawn_batches(p, 2), drawn_batches(p, 0)
    assert len(two) == 3  # 24 rows at batch 8: workers 0 and 1 take batches 0 and 1
    assert not torch.equal(two[0], two[1])  # the workers do not repeat each other's draws
    assert all(torch.equal(a, b) for a, b in zip(two, none, strict=True))  # nor change them
    weights = []
    for workers in (2, 2, 0):
        q = parse_params(tiny_params({"train": {"num_workers": workers}}))
        train.run(q, "resnet10t", 0)
        weights.append(load_file("models/resnet10t/fold0/model.safetensors"))
    for other in weights[1:]:
        assert all(torch.equal(weights[0][k], other[k]) for k in weights[0])

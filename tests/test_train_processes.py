"""The train stage as its own process: killed and resumed, and on two processes at once."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
import yaml
from safetensors.torch import load_file

from pipeline.preds import read_preds
from tests.conftest import CLASSES, tiny_params, write_csv_competition, write_prepared


def setup(folder: Path, n_train: int, over: dict) -> dict:
    write_prepared(folder, n_train=n_train, size=32)
    (folder / "params.yaml").write_text(yaml.safe_dump(tiny_params(over)))
    bindir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": bindir + os.pathsep + os.environ["PATH"],
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }


TRAIN = [sys.executable, "-m", "pipeline", "train", "--model", "resnet10t", "--fold", "0"]


def test_killed_run_resumes_at_the_next_epoch(tmp_path):
    env = setup(
        tmp_path,
        240,
        {
            "base": {"image_size": 32},
            "prepare": {"cache_size": 32},
            "train": {"epochs": 3, "batch_size": 16, "lr": "auto"},
            "lr_find": {"steps": 10},
        },
    )
    proc = subprocess.Popen(
        TRAIN, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seen = []
    for line in proc.stdout:  # kill the moment epoch 1 is reported (its checkpoint is on disk)
        seen.append(line)
        if "epoch   1 [full]" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    assert not (tmp_path / "models/resnet10t/fold0/model.safetensors").exists()
    assert (tmp_path / "checkpoints/resnet10t/fold0/state.pt").exists()

    shutil.rmtree(tmp_path / "dvclive")  # as `dvc repro` removes a stage's outputs first
    again = subprocess.run(TRAIN, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "at epoch 2 (epochs 1-1 done)" in again.stdout
    assert "epoch   2 [full]" in again.stdout and "epoch   3 [full]" in again.stdout
    assert "best epoch" in again.stdout
    assert (tmp_path / "models/resnet10t/fold0/model.safetensors").exists()
    assert not (tmp_path / "checkpoints/resnet10t/fold0").exists()  # finished: cleaned up
    curve = pd.read_csv(tmp_path / "dvclive/resnet10t/fold0/plots/metrics/train_loss.tsv", sep="\t")
    assert curve["step"].tolist() == [0, 1, 2]  # epoch 1 replayed into the fresh log
    live = tmp_path / "dvclive/resnet10t/fold0"
    assert (live / "plots/lr_find/full.tsv").exists()  # the LR range test is not run again…
    assert "LR range test" not in again.stdout
    assert "full" in json.loads((live / "metrics.json").read_text())["lr_find"]  # …but kept
    clean = tmp_path / "clean"  # the same run, never interrupted, gives the very same weights
    clean.mkdir()
    shutil.copy(tmp_path / "params.yaml", clean / "params.yaml")
    write_prepared(clean, n_train=240, size=32)
    subprocess.run(TRAIN, cwd=clean, env=env, check=True, capture_output=True)
    resumed = load_file(str(tmp_path / "models/resnet10t/fold0/model.safetensors"))
    fresh = load_file(str(clean / "models/resnet10t/fold0/model.safetensors"))
    assert all(torch.equal(resumed[k], fresh[k]) for k in fresh)


def terminal_signals() -> None:
    """Ctrl-C as a terminal delivers it: a suite started in the background by a non-interactive
    shell runs with SIGINT ignored, and its children would inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_prints_one_line_and_no_traceback(tmp_path):
    # epochs to spare after the first: Ctrl-C must land while it still trains
    env = setup(tmp_path, 200, {"base": {"image_size": 32}, "train": {"epochs": 8}})
    proc = subprocess.Popen(
        TRAIN, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=terminal_signals,
    )  # fmt: skip
    for line in proc.stdout:
        if "epoch   1 [full]" in line:
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("interrupted: train stopped")
    assert not (tmp_path / "models").exists()


def kill_when(cmd: list[str], cwd: Path, env: dict, seen: Callable[[], bool]) -> None:
    """Start `cmd`, SIGKILL it the moment `seen()` holds (polled every few ms)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if seen():
            proc.kill()
            break
        time.sleep(0.003)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "finished before it could be killed"


def test_killed_prepare_and_predict_leave_nothing_half_written(tmp_path):
    comp = write_csv_competition(tmp_path / "comp", n_train=800, n_test=100, size=24)
    over = {"competition": {"source": "path", "path": str(comp)}, "train": {"epochs": 1}}
    env = setup(tmp_path, 8, over)
    shutil.rmtree(tmp_path / "data" / "prepared")
    shutil.copytree(comp, tmp_path / "data" / "raw")
    prepare = [sys.executable, "-m", "pipeline", "prepare"]
    kill_when(prepare, tmp_path, env, lambda: any((tmp_path / "data").glob(".prepared*")))
    assert not (tmp_path / "data" / "prepared").exists()  # the old one is gone, none half-written
    subprocess.run(prepare, cwd=tmp_path, env=env, check=True, capture_output=True)
    assert len(pd.read_csv(tmp_path / "data/prepared/train.csv")) == 800
    fold = [sys.executable, "-m", "pipeline", "folds"]
    subprocess.run(fold, cwd=tmp_path, env=env, check=True, capture_output=True)
    subprocess.run(TRAIN, cwd=tmp_path, env=env, check=True, capture_output=True)
    predict = [sys.executable, "-m", "pipeline", "predict", "--model", "resnet10t", "--fold", "0"]
    preds = tmp_path / "preds" / "resnet10t"
    kill_when(predict, tmp_path, env, lambda: any(preds.glob(".fold0*")))
    assert not (preds / "fold0").exists()
    subprocess.run(predict, cwd=tmp_path, env=env, check=True, capture_output=True)
    assert len(read_preds(preds / "fold0", "oof", CLASSES)) == 400


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_end_with_identical_weights_and_one_writer(tmp_path):
    env = setup(tmp_path, 96, {"head": {"epochs": 1}, "train": {"epochs": 1}})
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        *TRAIN[1:],
    ]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "weights identical on 2 processes" in res.stdout
    assert res.stdout.count("best epoch") == 1  # only the main process reports and writes
    assert res.stdout.count("epoch   2 [full]") == 1
    curve = pd.read_csv(tmp_path / "dvclive/resnet10t/fold0/plots/metrics/valid_loss.tsv", sep="\t")
    assert curve["step"].tolist() == [0, 1]  # one writer: each epoch logged once
    weights = load_file(str(tmp_path / "models/resnet10t/fold0/model.safetensors"))
    assert weights["fc.weight"].shape == (3, 512)

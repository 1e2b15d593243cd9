"""The train stage as its own process: killed and resumed, and on two processes at once."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml
from safetensors.torch import load_file

from tests.conftest import tiny_params, write_prepared


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
        600,
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

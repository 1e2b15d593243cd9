"""Warm start (PIPELINE_WARM=1): a stage forked from a server gives the same weights as a plain
run, its exit code and messages reach the caller, and it dies with its caller."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from pipeline import warm
from pipeline.roles import TEACHER
from tests.conftest import ROOT, tiny_params

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="warm start needs fork")


def stage(workdir, warm_on: bool, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PIPELINE_WARM": "1" if warm_on else "0"}
    cmd = [sys.executable, "-m", "pipeline", "train", "--model", "resnet10t", "--fold", "0", *args]
    return subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def test_a_warm_stage_trains_the_same_weights_and_reports_like_a_plain_one(workdir):
    (workdir / "params.yaml").write_text(yaml.safe_dump(tiny_params({"train": {"epochs": 2}})))
    weights = workdir / TEACHER.models / "resnet10t/fold0/model.safetensors"
    runs = {}
    for warm_on in (False, True):
        p = stage(workdir, warm_on)
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        assert "best epoch" in out  # the child's stdout is the caller's
        runs[warm_on] = weights.read_bytes()
    assert runs[True] == runs[False]
    bad = stage(workdir, True, "--fold", "7")  # argparse takes the last --fold
    _, err = bad.communicate(timeout=120)
    assert bad.returncode == 1 and err.startswith("error: ")  # one line, as without the server


def test_a_warm_stage_dies_with_its_caller(workdir):
    (workdir / "params.yaml").write_text(yaml.safe_dump(tiny_params({"train": {"epochs": 200}})))
    p = stage(workdir, True)
    log = workdir / "dvclive/resnet10t/fold0/plots/metrics/train_loss.tsv"
    deadline = time.monotonic() + 240
    while not log.exists() and time.monotonic() < deadline:
        time.sleep(0.2)  # the first epoch is done: the child is training
    assert log.exists()
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    time.sleep(2)
    epochs = len(log.read_text().splitlines())
    time.sleep(3)
    assert len(log.read_text().splitlines()) == epochs  # nothing trains on


def test_code_or_thread_settings_name_another_server(monkeypatch):
    first = warm.socket_path()
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    assert warm.socket_path() != first
    monkeypatch.setenv("RANK", "0")  # a distributed launch: never forked
    monkeypatch.setenv("PIPELINE_WARM", "1")
    assert not warm.wanted(["train", "--model", "m", "--fold", "0"])

"""Shared fixtures: tiny generated competitions and a throw-away copy of the project for dvc."""

from __future__ import annotations

import configparser
import contextlib
import functools
import json
import os

# tests run two at a time (pytest-xdist) on tiny images: one thread each, and every stage they
# start inherits it, so the workers do not fight over the cores
os.environ.setdefault("OMP_NUM_THREADS", "1")

import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["cat", "dog", "fox"]


def class_image(k: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """An RGB image whose dominant channel is its class: learnable in one epoch, yet noisy."""
    img = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
    img[..., k % 3] += 150
    return img


def write_csv_competition(
    root: Path, n_train: int = 36, n_test: int = 12, size: int = 12, seed: int = 0
) -> Path:
    """Kaggle's common layout: train.csv (id,label), train/<id>.png, test/<id>.png, sample."""
    rng = np.random.default_rng(seed)
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    labels = [CLASSES[i % len(CLASSES)] for i in range(n_train)]
    for i, lab in enumerate(labels):
        Image.fromarray(class_image(CLASSES.index(lab), size, rng)).save(
            root / "train" / f"tr{i:03d}.png"
        )
    for i in range(n_test):
        Image.fromarray(class_image(i % 3, size, rng)).save(root / "test" / f"te{i:03d}.png")
    pd.DataFrame({"id": [f"tr{i:03d}" for i in range(n_train)], "label": labels}).to_csv(
        root / "train.csv", index=False
    )
    ids = [f"te{i:03d}" for i in rng.permutation(n_test)]
    pd.DataFrame({"id": ids, "label": CLASSES[0]}).to_csv(
        root / "sample_submission.csv", index=False
    )
    return root


@pytest.fixture
def tiny_comp(tmp_path: Path) -> Path:
    return write_csv_competition(tmp_path / "comp")


TINY_PARAMS = {
    "base": {"folds": [0, 1], "image_size": 16},
    "prepare": {"cache_size": 16},
    "train": {"epochs": 1, "batch_size": 8, "backbones": ["resnet10t"]},
    "augment": {"clean_epochs": 0},  # one epoch: no room for a clean finish
    "tta": {"views": ["hflip"]},
    "pseudo": {"epochs": 1, "threshold": 0.0},  # a 1-epoch teacher
    # is never confident; the tests' backbone is resnet10t (the demo's params.yaml: test_resnet)
}


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


DVC = str(Path(sys.executable).parent / "dvc")


def init_dvc(run) -> None:
    """A DVC repo (no git) in `run`'s folder, with the project's plot templates and page."""
    run(["dvc", "init", "--no-scm", "-q"])
    run(["dvc", "config", "core.analytics", "false"])
    shutil.copytree(ROOT / ".dvc" / "plots", Path(run(["pwd"]).stdout.strip()) / ".dvc" / "plots")
    page = configparser.ConfigParser()
    page.read(ROOT / ".dvc" / "config")
    run(["dvc", "config", "plots.html_template", page["plots"]["html_template"]])


class Project:
    """A copy of the project (code, dvc.yaml, params.yaml) in a temp folder, its own DVC repo."""

    def __init__(self, path: Path) -> None:
        self.path = path
        shutil.copytree(
            ROOT / "pipeline", path / "pipeline", ignore=shutil.ignore_patterns("__pycache__")
        )
        for name in ("dvc.yaml", "params.yaml"):
            shutil.copy(ROOT / name, path / name)
        init_dvc(self.run)

    @property
    def env(self) -> dict:
        bindir = str(Path(sys.executable).parent)  # dvc stages call `python` from PATH
        return {
            **os.environ,
            "PATH": bindir + os.pathsep + os.environ["PATH"],
            "DVC_NO_ANALYTICS": "1",
            "PYTHONPATH": str(self.path),
            # as `make demo` runs: stages fork from one process that imported torch once (the
            # in-process path is what every other test, and tests/test_warm.py, compare it to)
            "PIPELINE_WARM": "1",
        }

    def params(self) -> dict:
        return yaml.safe_load((self.path / "params.yaml").read_text())

    def set_params(self, over: dict) -> None:
        (self.path / "params.yaml").write_text(yaml.safe_dump(merge(self.params(), over)))

    def changed(self, *stages: str) -> dict:
        """`dvc status --json`, less the `source` stage's "always changed" (true by design)."""
        status = json.loads(self.run(["dvc", "status", "--json", *stages]).stdout or "{}")
        return {stage: what for stage, what in status.items() if what != ["always changed"]}

    def run(self, cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
        if cmd[0] == "dvc":
            cmd = [DVC, *cmd[1:]]
        elif cmd[0] == "pipeline":
            cmd = [sys.executable, "-m", "pipeline", *cmd[1:]]
        res = run_group(cmd, cwd=self.path, env=self.env)
        if check and res.returncode != 0:
            raise AssertionError(f"{cmd} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        return res


def run_group(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """`subprocess.run` in a process group of its own, killed whole if the caller stops (Ctrl-C,
    SIGTERM, a test timeout): no `dvc repro` or stage outlives the benchmark or test that ran it."""
    start = functools.partial(subprocess.Popen, cmd, **kw, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    with owned_group(start) as proc:
        out, err = proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@contextlib.contextmanager
def owned_group(start: Callable[[], subprocess.Popen]) -> Iterator[subprocess.Popen]:
    """The process `start()` opens (in a session of its own), while the caller waits on it:
    SIGTERM to the caller raises SystemExit, and on any exception (that one, Ctrl-C, a timeout)
    the process's whole group is killed and reaped before the exception goes on. The handler is
    in place before the process starts: no signal finds the caller unguarded."""
    main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGTERM, _terminated) if main else None
    proc = None
    try:
        proc = start()
        yield proc
    except BaseException:
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
        raise
    finally:
        if main:
            signal.signal(signal.SIGTERM, old)


def _terminated(signum: int, frame) -> None:
    raise SystemExit(128 + signum)


@pytest.fixture
def project(tmp_path: Path, tiny_comp: Path) -> Project:
    """The project pointed at the tiny competition, with tiny params (2 folds, 1 epoch)."""
    proj = Project(tmp_path / "proj")
    proj.set_params(merge(TINY_PARAMS, {"competition": {"source": "path", "path": str(tiny_comp)}}))
    return proj


def write_prepared(
    root: Path, n_train: int = 48, n_test: int = 8, size: int = 16, seed: int = 0
) -> None:
    """data/prepared/ and folds/folds.csv as `prepare` and `folds` write them (2 folds)."""
    rng = np.random.default_rng(seed)
    prepared = root / "data" / "prepared"
    prepared.mkdir(parents=True)
    labels = [CLASSES[i % 3] for i in range(n_train)]
    train_imgs = np.stack([class_image(CLASSES.index(c), size, rng) for c in labels])
    test_imgs = np.stack([class_image(i % 3, size, rng) for i in range(n_test)])
    np.save(prepared / "train_images.npy", train_imgs)
    np.save(prepared / "test_images.npy", test_imgs)
    ids = [f"tr{i:03d}" for i in range(n_train)]
    pd.DataFrame(
        {"id": ids, "path": [f"data/raw/train/{i}.png" for i in ids], "label": labels}
    ).to_csv(prepared / "train.csv", index=False)
    test_ids = [f"te{i:03d}" for i in range(n_test)]
    pd.DataFrame({"id": test_ids, "path": [f"data/raw/test/{i}.png" for i in test_ids]}).to_csv(
        prepared / "test.csv", index=False
    )
    pd.DataFrame({"id": test_ids, "label": CLASSES[0]}).to_csv(
        prepared / "sample_submission.csv", index=False
    )
    meta = {"task": "single_label", "classes": CLASSES, "submission_kind": "label"}
    (prepared / "meta.json").write_text(json.dumps(meta))
    (root / "folds").mkdir()
    pd.DataFrame(
        {"id": ids, "label": labels, "fold": [(i // 3) % 2 for i in range(n_train)]}
    ).to_csv(root / "folds" / "folds.csv", index=False)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder holding a prepared tiny competition and its folds; the cwd of the test."""
    write_prepared(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def tiny_params(over: dict | None = None) -> dict:
    """The project's params.yaml with tiny-run overrides, as a plain dict."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    return merge(merge(raw, TINY_PARAMS), over or {})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow tests (end to end) first, the longest first: two workers then finish together."""
    longest = ("test_dvc_repro_end_to_end", "test_multi_label_tags_planet")
    long = (  # tens of seconds each, though not end to end
        "test_tiny_two_class_competition_trains_with_default_params",
        "test_killed_run_resumes_at_the_next_epoch",
        "test_two_processes_end_with_identical_weights_and_one_writer",
    )

    def rank(item: pytest.Item) -> tuple[int, int]:
        name = item.name.split("[")[0]
        slow = "slow" in item.keywords or name in long
        return (0 if slow else 1, 0 if name in longest else 1)

    items.sort(key=rank)

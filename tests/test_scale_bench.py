"""benchmarks/scale.py on its smallest competitions: the generated data goes through the real
stages up to submit, and the table has a row per stage asked for; a process past the memory
limit is stopped and said to be; a benchmark stopped by SIGTERM leaves no `dvc repro` or stage
behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "scale.py"
N = 200


def scale(work: Path, *args: str) -> str:
    cmd = [sys.executable, str(SCRIPT), "--sizes", str(N), "--folds", "2", "--work", str(work),
           "--keep", "--timeout", "60", *args]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def rows(table: str) -> dict[str, list[str]]:
    """stage -> its cells (C, submission, one per size, the two exponents)."""
    out = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0] != "stage":
            out[cells[0]] = cells[1:]
    return out


@pytest.mark.parametrize(("classes", "kind"), [(10, "label"), (3, "probs")])
def test_ensemble_and_submit_run_on_the_generated_competition(tmp_path, classes, kind):
    out = scale(tmp_path, "--classes", str(classes), "--kinds", kind,
                "--stages", "ensemble,submit")  # fmt: skip
    table = rows(out)
    assert set(table) == {"ensemble", "submit"}, out
    for cells in table.values():
        assert cells[:2] == [str(classes), kind]
        assert cells[2].endswith(" MiB") and " s / " in cells[2], out  # finished: seconds, RSS
    proj = tmp_path / f"{N}x{classes}-{kind}" / "proj"
    sub = pd.read_csv(proj / "submissions" / "submission.csv", dtype=str)
    assert len(sub) == N and sub["id"].is_unique
    names = [f"c{k:04d}" for k in range(classes)]
    assert list(sub.columns) == (["id", "label"] if kind == "label" else ["id", *names])
    if kind == "label":
        assert set(sub["label"]) <= set(names) and sub["label"].nunique() > 1


def test_a_process_past_the_memory_limit_is_stopped_and_reported(tmp_path):
    out = scale(tmp_path, "--classes", "3", "--kinds", "label", "--stages", "source",
                "--mem-limit", "0.1")  # fmt: skip
    assert rows(out)["source"][2].startswith("killed past 0.1 GiB after"), out


WAITERS = {  # how a benchmark runs a command: Project.run's and scale.py's
    "run_group": "from tests.conftest import run_group\nrun_group(CMD)\n",
    "scale.measure": (
        "from benchmarks.scale import measure\nmeasure(CMD, WORK, WORK / 'log', 4.0, 600.0)\n"
    ),  # fmt: skip
}


@pytest.mark.parametrize("waiter", WAITERS)
def test_a_stopped_benchmark_takes_its_commands_with_it(tmp_path, waiter):
    """The commands a benchmark runs (dvc repro and its stages) die with the script."""
    pidfile = tmp_path / "pid"
    script = (f"import sys; from pathlib import Path; sys.path.insert(0, {str(ROOT)!r})\n"
              f"CMD = ['bash', '-c', 'sleep 300 & echo $! > {pidfile}; wait']\n"
              f"WORK = Path({str(tmp_path)!r})\n{WAITERS[waiter]}")  # fmt: skip
    with subprocess.Popen([sys.executable, "-c", script]) as bench:
        for _ in range(300):  # the grandchild is up once it wrote its pid
            if pidfile.exists() and pidfile.read_text().strip():
                break
            time.sleep(0.1)
        sleeper = int(pidfile.read_text())
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(timeout=30) == 128 + signal.SIGTERM
    for _ in range(50):
        try:
            os.kill(sleeper, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(sleeper, signal.SIGKILL)
    raise AssertionError(f"the benchmark's grandchild {sleeper} outlived it")

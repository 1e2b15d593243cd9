"""Work spread through DVC: folds trained on two machines, each on two processes under
`accelerate launch`, meet on a third through a shared remote; queued experiments."""

from __future__ import annotations

import csv
import io
import subprocess
import time

import pytest
import yaml
from safetensors.torch import load_file

from tests.conftest import DVC, TINY_PARAMS, Project, merge
from tests.test_train_processes import free_port

pytestmark = pytest.mark.slow

NO_ROUND = {"pseudo": {"enabled": False}, "diagnose": {"enabled": False}, "tta": {"views": []}}
# --multi_gpu: two processes; without a GPU accelerate makes them CPU processes (gloo)
LAUNCH = ("accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no "
          "--dynamo_backend no --main_process_port {port} -m pipeline")  # fmt: skip


def machine(path, comp, remote, launch: str | None = None) -> Project:
    """A checkout of the project sharing `remote`; `launch`: the train stages' launcher."""
    proj = Project(path)
    source = {"competition": {"source": "path", "path": str(comp)}}
    proj.set_params(merge(merge(TINY_PARAMS, NO_ROUND), source))
    proj.run(["dvc", "remote", "add", "-d", "shared", str(remote)])
    if launch:
        stages = yaml.safe_load((proj.path / "dvc.yaml").read_text())
        train = stages["stages"]["train"]
        train["cmd"] = train["cmd"].replace("python -m pipeline", launch)
        (proj.path / "dvc.yaml").write_text(yaml.safe_dump(stages, sort_keys=False))
    return proj


def started(out: str) -> list[str]:
    return [ln.split("'")[1] for ln in out.splitlines() if ln.startswith("Running stage")]


def test_folds_trained_on_two_machines_are_combined_on_a_third(tmp_path, tiny_comp):
    remote, launch = tmp_path / "remote", LAUNCH.format(port=free_port())
    a, b, c = (machine(tmp_path / name, tiny_comp, remote, launch) for name in "abc")
    for proj, fold in ((a, 0), (b, 1)):
        out = proj.run(["dvc", "repro", f"train@resnet10t-{fold}"]).stdout
        assert "weights identical on 2 processes" in out and out.count("best epoch") == 1
        assert f"train@resnet10t-{fold}" not in proj.run(["dvc", "status"]).stdout  # recorded
        proj.run(["dvc", "push", "--run-cache"])
    out = c.run(["dvc", "repro", "--pull", "--allow-missing"]).stdout
    assert not any(s.startswith("train@") for s in started(out)), out
    assert "Stage 'train@resnet10t-0' is cached" in out
    assert {"ensemble", "submit"} <= set(started(out))
    for proj, fold in ((a, 0), (b, 1)):
        mine = load_file(str(proj.path / f"models/resnet10t/fold{fold}/model.safetensors"))
        theirs = load_file(str(c.path / f"models/resnet10t/fold{fold}/model.safetensors"))
        assert all((mine[k] == theirs[k]).all() for k in mine)  # restored, not retrained
    assert (c.path / "submissions/submission.csv").exists()


def test_queued_experiments_run_in_parallel(tmp_path, tiny_comp):
    proj = machine(tmp_path / "proj", tiny_comp, tmp_path / "remote")
    proj.run(["dvc", "config", "core.no_scm", "false"])  # `dvc exp` needs git
    # the stages every experiment shares, built and committed first (as README says): two
    # workers building the same stage at once can race in DVC's run cache (treeverse/dvc#10673)
    for cmd in (
        ["git", "init", "-q"],
        ["dvc", "repro", "folds"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "start"],
    ):
        proj.run(cmd)  # fmt: skip
    for lr in ("0.002", "0.008"):
        proj.run(["dvc", "exp", "run", "--queue", "-S", f"train.lr={lr}", "train@resnet10t-0"])
    # the workers outlive `queue start` and hold whatever pipe it had: none, so nothing waits
    start = [DVC, "queue", "start", "-j", "2"]
    subprocess.run(start, cwd=proj.path, env=proj.env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=120)  # fmt: skip
    deadline = time.monotonic() + 600
    while "Queued" in (status := queue_status(proj)) or "Running" in status:
        assert time.monotonic() < deadline, status
        time.sleep(2)
    assert status.count("Success") == 2, status
    shown = proj.run(["dvc", "exp", "show", "--csv"]).stdout
    rows = [r for r in csv.DictReader(io.StringIO(shown)) if r["State"] == "Success"]
    assert sorted(float(r["peak_lr"]) for r in rows) == [0.002, 0.008]  # each trained at its LR
    proj.run(["dvc", "queue", "stop"])  # the idle workers go too


def queue_status(proj: Project) -> str:
    return proj.run(["dvc", "queue", "status"]).stdout

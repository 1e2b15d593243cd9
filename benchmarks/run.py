"""Every speed figure of the project, measured in one run on this machine, as one table.

    .venv/bin/python benchmarks/run.py            # all of it (the demo's dvc repro included)
    .venv/bin/python benchmarks/run.py --no-demo  # without the demo's full run

Rows (not a test: a shared machine is noisy, so each side of a ratio is measured in this run):
1. trainer ÷ plain loop: images/s of `pipeline.loop.fit`'s steps against a plain timm + PyTorch
   loop, same model, batch and in-memory tensors (goal >= 0.95);
2. loader ÷ trainer: images/s of the training loader alone (the demo's uint8 cache, augmentation
   at full strength) against the trainer's steps at the same size and batch (goal >= 4);
3. head phase without ÷ with `head.precompute` (goal >= 5);
4. TTA: rows/s of predict with the plain prediction and each view;
5. peak memory of a training run with 1 and 2 loader workers (the process and its workers:
   PSS, and private memory, USS), against one batch of decoded images;
6. the demo's `dvc repro` in a fresh copy of the project, as `make demo` runs it (warm start):
   wall time in all and per stage.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import timm
import torch
import yaml
from accelerate import Accelerator

USER_THREADS = os.environ.get("OMP_NUM_THREADS")  # before tests.conftest sets 1 for its workers
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import trainer_speed as ts  # noqa: E402

from pipeline.params import parse_params  # noqa: E402
from tests.conftest import Project, tiny_params, write_prepared  # noqa: E402

ROWS: list[tuple[str, str, str]] = []  # (what, figure, goal)


def row(what: str, figure: str, goal: str = "") -> None:
    ROWS.append((what, figure, goal))
    print(f"  {what}: {figure} {goal}", flush=True)


def in_dir(path: Path):
    class Cwd:
        def __enter__(self):
            self.old = os.getcwd()
            os.chdir(path)

        def __exit__(self, *exc):
            os.chdir(self.old)

    return Cwd()


def trainer_ratio(model: str, size: int, batch: int, tmp: Path) -> float:
    data = ts.loader(2048, size, batch)
    valid = ts.loader(batch * 2, size, batch * 2)
    ts.plain_loop(model, data, 1)  # warm-up
    ours = plain = 0.0
    for _ in range(3):  # alternate, keep each side's best: a shared machine only slows a run
        ours = max(ours, ts.our_loop(model, data, valid, 2, tmp)[1])
        plain = max(plain, ts.plain_loop(model, data, 2))
    row(f"trainer steps ÷ plain timm loop, {model}",
        f"{ours:.0f} / {plain:.0f} img/s = {ours / plain:.3f}", "(goal >= 0.95)")  # fmt: skip
    return ours


def loader_ratio(trainers: dict[str, float], size: int, batch: int, tmp: Path) -> None:
    from pipeline import batches, specs
    from pipeline.index import read_index

    work = tmp / "loader"
    write_prepared(work, n_train=2048, size=size)
    raw = tiny_params({"base": {"image_size": size}, "train": {"batch_size": batch}})
    raw["augment"].update(strength_start=1.0, strength_end=1.0, clean_epochs=0)
    p = parse_params(raw)
    with in_dir(work):
        index = read_index()
        net = timm.create_model("resnet10t", num_classes=3)
        gpu = torch.cuda.is_available()  # as the stage runs there: pinned memory, workers
        d = batches.fold_data(p, index, net, 0, Accelerator(cpu=not gpu))  # gpu.py made one
        make = batches.train_loaders(p, specs.teacher_spec(p, "resnet10t"), d, 0)
        best = 0.0
        for epoch in range(3):
            start, seen = time.perf_counter(), 0
            for x, _ in make(epoch, 3):
                seen += len(x)
            best = max(best, seen / (time.perf_counter() - start))
    for model, trainer in trainers.items():
        row(f"loader (cache + augmentation) ÷ trainer, {model}",
            f"{best:.0f} / {trainer:.0f} img/s = {best / trainer:.1f}", "(goal >= 4)")  # fmt: skip


def head_ratio(tmp: Path) -> None:
    slow = ts.head_phase_seconds(False, 8, tmp)
    fast = ts.head_phase_seconds(True, 8, tmp)
    row("head phase without ÷ with precompute", f"{slow:.1f} / {fast:.1f} s = {slow / fast:.1f}",
        "(goal >= 5)")  # fmt: skip


def tta_rates(size: int, model: str = "resnet10t", rows: int = 1024) -> None:
    """Rows/s of predict_views per view, on the GPU if there is one (the views run there)."""
    from pipeline.inference import VIEWS, predict_views

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = timm.create_model(model, num_classes=10).eval().to(device)
    net = net.to(memory_format=torch.channels_last)  # as the predict stage runs it
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(rows, 3, size, size), torch.zeros(rows)),
        batch_size=256,
    )
    predict_views(net, data, [], device=device)  # warm-up
    for view in ["(plain only)", *VIEWS]:
        start = time.perf_counter()
        predict_views(net, data, [] if view.startswith("(") else [view], device=device)
        rate = rows / (time.perf_counter() - start)
        what = "plain only" if view.startswith("(") else f"plain + {view}"
        row(f"TTA rows/s, {model}, {what}", f"{rate:.0f}")


def peak_memory(cmd: list[str], cwd: Path, env: dict) -> dict[str, float]:
    """Peaks of a command and all its children, MiB, sampled every 20 ms: `pss`, the sum of their
    PSS; `uss`, the sum of their private memory (USS); `worker`, the largest USS one child reached.
    PSS splits shared pages (libraries, the memory-mapped cache) among every process mapping them,
    so it also moves with processes outside the command; USS leaves shared pages out, and it is
    what one more worker adds."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    top, parent = {"pss": 0.0, "uss": 0.0, "worker": 0.0}, psutil.Process(proc.pid)

    def sample() -> None:
        while proc.poll() is None:
            pss = uss = 0
            for pr in [parent, *parent.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                    info = pr.memory_full_info()
                    pss, uss = pss + info.pss, uss + info.uss
                    if pr is not parent:
                        top["worker"] = max(top["worker"], info.uss / 2**20)
            top["pss"], top["uss"] = max(top["pss"], pss / 2**20), max(top["uss"], uss / 2**20)
            time.sleep(0.02)

    t = threading.Thread(target=sample)
    t.start()
    proc.wait()
    t.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed")
    return top


def memory_by_workers(tmp: Path) -> None:
    proj = Project(tmp / "memory")
    proj.set_params({"train": {"epochs": 2}, "pseudo": {"enabled": False}})
    # no warm server: the stage would run in it, not under `cmd`, and a torch process outside
    # the measured ones shifts their share (PSS) of the libraries' pages
    env = {k: v for k, v in proj.env.items() if k != "PIPELINE_WARM"}
    subprocess.run(["dvc", "repro", "folds"], cwd=proj.path, env=env, check=True,
                   capture_output=True)  # fmt: skip
    p = proj.params()
    peaks = {}
    for workers in (1, 2):
        proj.set_params({"train": {"num_workers": workers}})
        cmd = [sys.executable, "-m", "pipeline", "train", "--model", "resnet10t", "--fold", "0"]
        peaks[workers] = peak_memory(cmd, proj.path, env)
    size = p["prepare"]["cache_size"]
    batch_mib = 64 * size * size * 3 / 2**20
    one, two = peaks[1], peaks[2]
    row("peak memory, 1 / 2 loader workers", f"{one['pss']:.0f} / {two['pss']:.0f} MiB PSS "
        f"(+{two['pss'] - one['pss']:.0f}); private (USS) {one['uss']:.0f} / {two['uss']:.0f} "
        f"MiB (+{two['uss'] - one['uss']:.0f}); one worker's USS at most {two['worker']:.0f} MiB "
        "(a training and a validation worker persist for each worker); one batch of decoded "
        f"images: {batch_mib:.1f} MiB")  # fmt: skip


def demo_stages(tmp: Path) -> None:
    proj = Project(tmp / "demo")
    env = {**proj.env, "PIPELINE_WARM": "1"}  # as `make demo` runs it: the user's threads
    env.pop("OMP_NUM_THREADS", None)
    if USER_THREADS is not None:
        env["OMP_NUM_THREADS"] = USER_THREADS
    proc = subprocess.Popen([str(Path(sys.executable).parent / "dvc"), "repro"], cwd=proj.path,
                            env=env, stdout=subprocess.PIPE, text=True)  # fmt: skip
    start = last = time.perf_counter()
    stage, spent = None, {}
    for line in proc.stdout:
        if line.startswith("Running stage"):
            now = time.perf_counter()
            if stage:
                spent[stage] = now - last
            stage, last = line.split("'")[1], now
    proc.wait()
    end = time.perf_counter()
    if stage:
        spent[stage] = end - last
    if proc.returncode != 0:
        raise RuntimeError("the demo's dvc repro failed")
    groups: dict[str, list[float]] = {}
    for name, s in spent.items():
        groups.setdefault(name.split("@")[0], []).append(s)
    row("demo dvc repro, wall time", f"{end - start:.0f} s", "(goal <= 180 s)")
    for name, times in groups.items():
        each = f" ({len(times)} x {np.mean(times):.1f} s)" if len(times) > 1 else ""
        row(f"  stage {name}", f"{sum(times):.1f} s{each}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-demo", action="store_true", help="skip the demo's full dvc repro")
    a = ap.parse_args()
    torch.manual_seed(0)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    size = raw["base"]["image_size"] or 224
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    print(f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, CUDA: {gpu}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        models = dict.fromkeys(["resnet10t", raw["train"]["backbones"][0]])  # + the demo's
        trainers = {m: trainer_ratio(m, size, 64, tmp) for m in models}
        loader_ratio(trainers, size, 64, tmp)
        head_ratio(tmp)
        tta_rates(size)
        memory_by_workers(tmp)
        if not a.no_demo:
            demo_stages(tmp)
    print("\n| what | measured | goal |\n|---|---|---|")
    for what, figure, goal in ROWS:
        print(f"| {what.strip()} | {figure} | {goal.strip('()')} |")


if __name__ == "__main__":
    main()

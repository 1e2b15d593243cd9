"""The GPU fast path, measured in one run (not a test: nothing depends on a GPU).

    python benchmarks/gpu.py                                   # resnet50 at 224 px, bf16
    python benchmarks/gpu.py --model resnet10t --size 32 --images 512 --no-compile  # a CPU check

Rows, each side of a ratio measured in this run:
1. our trainer's steps ÷ a plain timm + PyTorch loop, both channels_last and autocast
   (`--precision`, bf16 by default), eager and with `torch.compile` (each side's last epoch: the
   first one compiles), with the GPU's utilisation over our fit (nvidia-ml-py, every 0.1 s);
2. the train stage's own loader (the uint8 cache, augmentation at full strength,
   `train.num_workers: auto`, pinned memory, persistent workers) ÷ our trainer's eager steps;
3. TTA rows/s with the views batched on the device.

A bare GPU machine with PyTorch, timm and accelerate lacks these, which travel as wheels:
pydantic, pydantic-core, annotated-types, typing-inspection, albumentations, albucore, simsimd,
stringzilla.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
from pathlib import Path

import run  # benchmarks/run.py: its table, loader and TTA rows
import torch
import trainer_speed as ts


def utilisation(during) -> tuple[object, float | None]:
    """(what `during()` returns, the GPU's mean utilisation in % while it ran; None without a
    GPU or nvidia-ml-py)."""
    if not torch.cuda.is_available():
        return during(), None
    try:
        torch.cuda.utilization()
    except Exception:  # no nvidia-ml-py, or no NVML on this machine  # noqa: BLE001
        return during(), None
    samples, done = [], threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            samples.append(torch.cuda.utilization())

    t = threading.Thread(target=sample)
    t.start()
    try:
        out = during()
    finally:
        done.set()
        t.join()
    return out, (sum(samples) / len(samples) if samples else None)


def trainer_rows(a: argparse.Namespace, tmp: Path) -> float:
    """Our steps against the plain loop, eager and compiled; returns our eager images/s."""
    data = ts.loader(a.images, a.size, a.batch)
    valid = ts.loader(a.batch * 2, a.size, a.batch * 2)
    ts.plain_loop(a.model, data, 1, a.precision)  # warm-up: allocator, cuDNN's algorithms
    eager = 0.0
    for compiled in (False, True) if a.compile else (False,):
        plain = ts.plain_loop(a.model, data, a.epochs, a.precision, compiled, last=True)
        (_, _, ours), busy = utilisation(
            lambda c=compiled: ts.our_loop(a.model, data, valid, a.epochs, tmp, a.precision, c)
        )
        precision = a.precision if torch.cuda.is_available() else "fp32 (autocast is GPU only)"
        how = f"{a.model}, {a.size} px, batch {a.batch}, {precision}, channels_last" + (
            ", compiled" if compiled else ", eager"
        )
        ratio = f"{ours:.0f} / {plain:.0f} img/s = {ours / plain:.3f}"
        run.row(f"trainer steps ÷ plain loop, {how}", ratio, "(goal >= 0.95)")
        if busy is not None:
            what = f"GPU utilisation over our fit (eval, checkpoints, compiling), {how}"
            run.row(what, f"{busy:.0f}%")
        eager = eager or ours
    return eager


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "no"])
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    a = ap.parse_args()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    print(f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, CUDA: {gpu}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ours = trainer_rows(a, tmp)
        run.loader_ratio({a.model: ours}, a.size, a.batch, tmp)
        run.tta_rates(a.size, a.model, rows=a.batch * 8)
    print("\n| what | measured | goal |\n|---|---|---|")
    for what, figure, goal in run.ROWS:
        print(f"| {what.strip()} | {figure} | {goal.strip('()')} |")


if __name__ == "__main__":
    main()

"""The one training loop, written against accelerate (CPU, one GPU, several GPUs or nodes).

`fit` runs a list of phases (head only, then everything unfrozen). Each phase names the module it
runs (the whole model, or only the classifier on precomputed features), its loaders, and its
optimizer parameter groups, each with its own peak LR under a 1cycle (cyclical momentum on Adam's
beta1) or SGDR schedule. A phase whose LR is `auto` starts with an LR range test. With
`accumulate` k the optimizer steps once every k batches, on the mean of their gradients; the
schedules and the range test count those optimizer steps, not batches. After every epoch a
checkpoint (model, optimizer, RNG, history) is written outside the stage's DVC outputs, so a
killed stage rerun with the same params resumes at the next epoch.

A phase may mix its training batches (mixup/cutmix, `Phase.mix`), and `LoopConfig.ema` keeps an
EMA of the weights, updated after every optimizer step: every epoch validates it too, and the
better of the two can be the one kept.
"""

from __future__ import annotations

import math
import pickle
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, DataLoaderConfiguration
from torch import nn

from pipeline import schedules
from pipeline.files import PipelineError, atomic_path
from pipeline.lr_find import lr_range_test
from pipeline.params import LrFind
from pipeline.progress import progress
from pipeline.steps import (
    Criterion,
    Ema,
    LossTally,
    Phase,
    Prepared,
    accumulate,
    batch_loss,
    evaluate,
    rng_state,
    set_rng_state,
    set_trainable,
    steps_per_epoch,
    train_mode,
)
from pipeline.targets import OnlineTargets

SGDR_BETA1 = 0.9  # Adam's beta1 under SGDR (1cycle moves it: schedules.one_cycle_momentum)


@dataclass(frozen=True)
class LoopConfig:
    task: str  # single_label (softmax + cross-entropy) | multi_label (sigmoid + BCE)
    pct_start: float
    div: float
    final_div: float
    cycle_len: int
    cycle_mult: int
    label_smoothing: float
    lr_find: LrFind
    key: dict[str, str] | str  # hashes of what shapes training: a checkpoint resumes on a match
    class_weights: list[float] | None = None
    maximize: bool = True  # the metric's direction (log loss: False); rows keep its natural sign
    accumulate: int = 1  # batches a step: schedules and the LR range test count optimizer steps
    ema: float | None = None  # decay of the weights' EMA (Ema); None or 0: none
    online: OnlineTargets | None = None  # a student's own targets (pseudo.weighting: online)


@dataclass
class History:
    rows: list[dict] = field(default_factory=list)  # one per finished epoch
    best_score: float = -math.inf
    best_epoch: int = -1
    lrs: dict[str, list[float]] = field(default_factory=dict)  # phase -> peak LR per group
    lr_tests: dict[str, list] = field(default_factory=dict)  # phase -> [lrs, losses, chosen]


def accelerator(precision: str) -> Accelerator:
    """The GPU when there is one, under `precision` there (train.mixed_precision). Batches go to
    it without the CPU waiting (non_blocking from pinned memory, as a plain loop copies them):
    a blocking copy queues behind the GPU's work and stalls the next step's launch."""
    gpu = torch.cuda.is_available()
    return Accelerator(
        cpu=not gpu,
        mixed_precision=precision if gpu else "no",
        dataloader_config=DataLoaderConfiguration(non_blocking=gpu),
    )


def loss_function(cfg: LoopConfig, device: torch.device) -> Criterion:
    weights = torch.tensor(cfg.class_weights, dtype=torch.float32) if cfg.class_weights else None
    return Criterion(cfg.task, weights, cfg.label_smoothing, cfg.online).to(device)


def _set_lrs(opt, phase: Phase, peaks: list[float], step: int, steps: int, spe: int, cfg) -> None:
    """Schedule: every group follows its own peak; 1cycle moves beta1 opposite to the LR."""
    if phase.schedule == "sgdr":
        beta1 = SGDR_BETA1
        lrs = [
            schedules.sgdr_lr(step, spe, p, p / cfg.final_div, cfg.cycle_len, cfg.cycle_mult)
            for p in peaks
        ]
    else:
        beta1 = schedules.one_cycle_momentum(step, steps, cfg.pct_start)
        lrs = [
            schedules.one_cycle_lr(step, steps, p, cfg.pct_start, cfg.div, cfg.final_div)
            for p in peaks
        ]
    for g, lr in zip(opt.param_groups, lrs, strict=True):
        g["lr"] = lr
        g["betas"] = (beta1, g["betas"][1])


def _divergence(phase: str, epoch: int, step_lrs: list[float], k: int):
    """The error for a non-finite loss at an epoch's batch i (its step's LR: train.accumulate)."""

    def error(i: int, value: float) -> PipelineError:
        return PipelineError(
            f"loss is {value} in phase '{phase}', epoch {epoch + 1}, step {i + 1}, lr "
            f"{step_lrs[i // k]:.3g}: lower the learning rate, or set it to `auto` to run the "
            "LR range test"
        )

    return error


def fit(
    model: nn.Module,  # the whole model: what checkpoints and `on_best` see
    phases: list[Phase],
    cfg: LoopConfig,
    metric: Callable[[np.ndarray, np.ndarray], float],  # (probs, targets) -> its natural value
    acc: Accelerator,
    ckpt: Path,
    log: Callable[[dict], None],  # each epoch's row, also the ones replayed on resume
    on_best: Callable[[nn.Module, dict], None],
    on_lr_find: Callable[[str, list[float], list[float], float], None] = lambda *a: None,
    on_snapshot: Callable[[nn.Module, int], None] = lambda *a: None,
) -> History:
    """Every phase in turn, an epoch at a time: train, validate, keep the best, checkpoint. A
    checkpoint made under the same key resumes after its last finished epoch."""
    hist, state = resume(model, ckpt, cfg.key, acc, log, on_lr_find)
    run = Run(model, cfg, metric, acc, loss_function(cfg, acc.device), Prepared(acc),
              sum(p.epochs for p in phases))  # fmt: skip
    start, end = len(hist.rows), 0
    for phase in phases:
        first, end = end, end + phase.epochs
        if start >= end:
            continue  # finished before the stage was killed
        s = start_phase(run, phase, first, state, hist, on_lr_find)
        cycle_ends = schedules.sgdr_cycle_ends(phase.epochs, cfg.cycle_len, cfg.cycle_mult)
        for epoch in range(max(first, start), end):
            row = epoch_row(run, s, epoch)
            kept, weights = kept_weights(run, s, row)
            hist.rows.append(row)
            if kept > hist.best_score:
                hist.best_score, hist.best_epoch = kept, epoch + 1
                on_best(weights, row)
            if phase.schedule == "sgdr" and epoch + 1 - first in cycle_ends:
                on_snapshot(model, cycle_ends.index(epoch + 1 - first))
            if acc.is_main_process:  # everything needed to continue at the next epoch
                _save_checkpoint(ckpt, cfg.key, phase.name, model, s.opt, hist, run.ema)
            acc.wait_for_everyone()
            log(row)
    return hist


@dataclass
class Run:
    """What every epoch of one `fit` uses."""

    model: nn.Module
    cfg: LoopConfig
    metric: Callable[[np.ndarray, np.ndarray], float]
    acc: Accelerator
    loss_fn: Criterion
    prepare: Prepared
    total: int  # epochs over every phase
    ema: Ema | None = None  # made at the first phase (on the device the model trains on)


@dataclass
class Stepper:
    """One phase under way: its prepared module and optimizer, peak LRs and first epoch."""

    phase: Phase
    net: nn.Module
    opt: torch.optim.Optimizer
    peaks: list[float]
    first: int
    spe: int | None = None  # batches an epoch: the same rows and batch size every epoch


def resume(
    model, ckpt: Path, key, acc: Accelerator, log, on_lr_find
) -> tuple[History, dict | None]:
    """(History, checkpoint state) of a checkpoint made under `key`, its model, RNG, LR tests
    and rows restored and replayed; else a fresh history (a stale checkpoint folder removed)."""
    state = _load_checkpoint(ckpt, key)
    if state is None and ckpt.parent.exists() and acc.is_main_process:
        shutil.rmtree(ckpt.parent)  # left by other params or data: its best/snapshots are stale
    acc.wait_for_everyone()
    if state is None:
        return History(), None
    hist = History(
        state["rows"], state["best_score"], state["best_epoch"], state["lrs"], state["lr_tests"]
    )
    done = len(hist.rows)
    acc.print(f"resuming from {ckpt} at epoch {done + 1} (epochs 1-{done} done)")
    model.load_state_dict(state["model"])
    set_rng_state(state["rng"])
    for phase_name, (lrs, losses, chosen) in hist.lr_tests.items():
        on_lr_find(phase_name, lrs, losses, chosen)  # the stage's outputs were wiped too
    for row in hist.rows:
        log(row)
    return hist, state


def start_phase(run: Run, phase: Phase, first: int, state, hist: History, on_lr_find) -> Stepper:
    """The phase's optimizer (its checkpointed state on resume), the EMA once, and its peak LRs
    (after the LR range test where the phase asks for one)."""
    set_trainable(run.model, phase.groups)
    groups = [{"params": g["params"], "lr": g["lr"], "weight_decay": g["weight_decay"]}
              for g in phase.groups]  # fmt: skip
    net, opt = run.acc.prepare(phase.module, torch.optim.AdamW(groups, fused=True))
    if run.cfg.ema and run.ema is None:
        run.ema = Ema(run.model, run.cfg.ema, state and state.get("ema"))
    if state is not None and state["phase"] == phase.name:
        opt.load_state_dict(state["optimizer"])
    if phase.name not in hist.lrs:
        hist.lrs[phase.name] = peak_lrs(run, phase, net, opt, hist, on_lr_find)
    return Stepper(phase, net, opt, hist.lrs[phase.name], first)


def peak_lrs(run: Run, phase: Phase, net, opt, hist: History, on_lr_find) -> list[float]:
    """Each group's peak LR: as set, or scaled so that the top one is the LR range test's pick."""
    peaks, lf = [g["lr"] for g in phase.groups], run.cfg.lr_find
    if not phase.find_lr:
        return peaks
    lrs, losses = lr_range_test(
        phase, net, opt, run.loss_fn, run.acc, lf, run.prepare, run.cfg.accumulate
    )
    chosen = schedules.suggest_lr(lrs, losses, lf.suggestion)
    run.acc.print(f"LR range test ({phase.name}): {lf.suggestion} {chosen:.3g}")
    on_lr_find(phase.name, lrs, losses, chosen)
    hist.lr_tests[phase.name] = [lrs, losses, chosen]
    return [p * chosen / max(peaks) for p in peaks]


def epoch_row(run: Run, s: Stepper, epoch: int) -> dict:
    """Train one epoch, then validate: the epoch's row."""
    train_loss, images_per_s, waited, step_lrs = train_epoch(run, s, epoch)
    v_loss, probs, targets = evaluate(s.net, s.phase.valid_loader, run.acc, run.loss_fn,
                                      run.cfg.task)  # fmt: skip
    return {
        "epoch": epoch + 1,
        "phase": s.phase.name,
        "train_loss": train_loss,
        "valid_loss": v_loss,
        "images_per_s": images_per_s,  # training steps only, all processes
        "data_wait": waited,  # share of the epoch spent waiting for the loader
        "valid_metric": run.metric(probs, targets),  # natural sign: a log loss stays positive
        "lr": s.peaks[-1],
        "step_lrs": step_lrs,  # the head group's LR at every optimizer step of the epoch
    }


def train_epoch(run: Run, s: Stepper, epoch: int) -> tuple[float, float, float, list[float]]:
    """(mean training loss, images a second, share of time waiting for data, each optimizer
    step's LR) of one epoch over the phase's training batches."""
    acc, k = run.acc, run.cfg.accumulate
    loader = run.prepare(s.phase.train_loader(epoch, run.total))
    s.spe = s.spe or len(loader)
    if len(loader) != s.spe:  # image size may change; the steps may not
        raise RuntimeError(f"epoch {epoch + 1}: {len(loader)} steps, not {s.spe}")
    ope = steps_per_epoch(s.spe, k)  # optimizer steps: what schedules count
    train_mode(s.phase, s.net)
    started, step_lrs = time.perf_counter(), []
    tally = LossTally(acc, _divergence(s.phase.name, epoch, step_lrs, k))
    desc = f"{s.phase.name} epoch {epoch + 1}/{run.total}"
    waited, asked = 0.0, time.perf_counter()  # time spent waiting for the next batch
    for i, batch in enumerate(progress(loader, len(loader), desc, "batch", acc.is_main_process)):
        waited += time.perf_counter() - asked
        if i % k == 0:  # an optimizer step begins: its LR
            step = (epoch - s.first) * ope + i // k
            _set_lrs(s.opt, s.phase, s.peaks, step, s.phase.epochs * ope, ope, run.cfg)
            step_lrs.append(s.opt.param_groups[-1]["lr"])
        train_batch(run, s, batch, i, epoch, tally)
        asked = time.perf_counter()
    train_loss = tally.mean()  # waits for the GPU's last step: the time below is real
    spent = time.perf_counter() - started
    return train_loss, tally.seen * acc.num_processes / spent, waited / spent, step_lrs


def train_batch(run: Run, s: Stepper, batch, i: int, epoch: int, tally: LossTally) -> None:
    """Forward (mixup/cutmix by chance: the epoch's strength), loss, backward; the optimizer
    steps every cfg.accumulate batches, and the EMA follows each step."""
    if s.phase.mix is not None:
        batch = s.phase.mix(batch, epoch, run.total)
    loss = batch_loss(s.net, batch, run.loss_fn, run.acc)
    tally.add(loss, len(batch[0]))  # a non-finite loss raises, within 32 batches
    stepped = accumulate(s.net, s.opt, loss, i, s.spe, run.cfg.accumulate, run.acc)
    if stepped and run.ema is not None:
        run.ema.update(run.model)


def kept_weights(run: Run, s: Stepper, row: dict) -> tuple[float, nn.Module]:
    """(score, weights) this epoch offers as the best: the model's, or its EMA's if better."""
    score = row["valid_metric"] if run.cfg.maximize else -row["valid_metric"]
    if run.ema is None:
        return score, run.model
    return _validate_ema(run.ema, run.model, s.phase, run.acc, run.loss_fn, run.cfg, run.metric,
                         row)  # fmt: skip


def _validate_ema(
    ema: Ema, model: nn.Module, phase: Phase, acc: Accelerator, loss_fn: nn.Module,
    cfg: LoopConfig, metric: Callable, row: dict,
) -> tuple[float, nn.Module]:  # fmt: skip
    """Validates the average: its loss and metric join the epoch's row, with `kept_weights`, the
    better of the two this epoch ("raw" on a tie); returns that one's score and weights."""
    loss, probs, targets = evaluate(ema.of(model, phase.module), phase.valid_loader, acc, loss_fn,
                                    cfg.task)  # fmt: skip
    value = metric(probs, targets)
    sign = 1.0 if cfg.maximize else -1.0  # scores: higher is better
    raw, avg = sign * row["valid_metric"], sign * value
    row.update(ema_valid_loss=loss, ema_valid_metric=value)
    row["kept_weights"] = "ema" if avg > raw else "raw"
    return (avg, ema.avg.module) if avg > raw else (raw, model)


def _save_checkpoint(
    path: Path, key: dict | str, phase: str, model, opt, hist: History, ema: Ema | None = None
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "key": key,
        "phase": phase,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "rows": hist.rows,
        "best_score": hist.best_score,
        "best_epoch": hist.best_epoch,
        "lrs": hist.lrs,
        "lr_tests": hist.lr_tests,
        "rng": rng_state(),
        "ema": None if ema is None else ema.state(),  # the average and its step count
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(path: Path, key: dict | str) -> dict | None:
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # no arbitrary unpickling
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:
        print(f"ignoring unreadable checkpoint {path} ({type(e).__name__}); starting afresh")
        return None
    if state.get("key") != key:  # written under other params, data, weights or code
        old, new = state.get("key"), key
        parts = ["params or data"]
        if isinstance(old, dict) and isinstance(new, dict):
            parts = [k for k in new if old.get(k) != new[k]]
        print(f"not resuming from {path}: made with other {', '.join(parts)}; starting afresh")
        return None
    return state

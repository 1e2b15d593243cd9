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

import contextlib
import copy
import math
import pickle
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, DataLoaderConfiguration
from timm.utils import ModelEmaV3
from torch import nn

from pipeline import schedules
from pipeline.files import PipelineError, atomic_path
from pipeline.params import LrFind
from pipeline.progress import progress

Loader = torch.utils.data.DataLoader


@dataclass
class Phase:
    name: str
    epochs: int
    module: nn.Module  # what the batches go through: the model, or its classifier alone
    groups: list[dict]  # optimizer groups: {"name", "params", "lr" (peak), "weight_decay"}
    train_loader: Callable[[int, int], Loader]  # (epoch, total epochs) -> loader (maybe the same)
    valid_loader: Loader
    schedule: str = "one_cycle"  # one_cycle | sgdr
    find_lr: bool = False  # run the LR range test first and scale every group's peak LR to it
    frozen_bn: list[nn.Module] = field(default_factory=list)  # kept in eval mode: stats fixed
    # mixup/cutmix: (batch, epoch, total epochs) -> the batch, maybe mixed (data.BatchMix)
    mix: Callable[[tuple, int, int], tuple] | None = None


class Prepared:
    """acc.prepare, once per loader: a loader handed back every epoch (train.train_loaders) keeps
    one prepared wrapper, hence its persistent workers, from the LR range test to the last epoch."""

    def __init__(self, acc: Accelerator) -> None:
        self.acc, self.raw, self.ready = acc, None, None

    def __call__(self, loader: Loader) -> Loader:
        if loader is not self.raw:
            self.raw, self.ready = loader, self.acc.prepare(loader)
        return self.ready


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


@dataclass
class History:
    rows: list[dict] = field(default_factory=list)  # one per finished epoch
    best_score: float = -math.inf
    best_epoch: int = -1
    lrs: dict[str, list[float]] = field(default_factory=dict)  # phase -> peak LR per group
    lr_tests: dict[str, list] = field(default_factory=dict)  # phase -> [lrs, losses, chosen]


def _rng_state() -> dict:
    """Every generator's full state as tensors (a checkpoint is loaded with weights_only)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    _, words, spare = random.getstate()  # Mersenne Twister words, and gauss()'s spare draw
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "numpy_rest": torch.tensor([pos, has_gauss, gauss], dtype=torch.float64),
        "python": torch.tensor(words, dtype=torch.int64),
        "python_gauss": torch.tensor([math.nan if spare is None else spare], dtype=torch.float64),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    pos, has_gauss, gauss = s["numpy_rest"].tolist()
    keys = s["numpy"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, int(pos), int(has_gauss), gauss))
    spare = s["python_gauss"].item()
    random.setstate((3, tuple(int(v) for v in s["python"].tolist()),
                     None if math.isnan(spare) else spare))  # fmt: skip
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(s["cuda"]))


class Ema:
    """An exponential moving average of the weights: timm's ModelEmaV3 over every floating tensor
    of the model's state (parameters and BatchNorm statistics) with its warm-up. After optimizer
    step k of the run (1-based, over every phase) e_k = d_k e_(k-1) + (1 - d_k) w_k with
    d_k = min(decay, 1 - k ** (-2/3)): d_1 = 0, the average starts at the weights, and a short run
    is not held to its start (without the warm-up 0.999 ** 400 = 67% of the average would still
    be the initial weights after 400 steps)."""

    def __init__(self, model: nn.Module, decay: float, state: dict | None = None) -> None:
        self.avg, self.steps = ModelEmaV3(model, decay=decay, use_warmup=True), 0
        if state is not None:  # a checkpoint's: the same average, the same step count
            self.avg.module.load_state_dict(state["weights"])
            self.steps = int(state["steps"])

    def update(self, model: nn.Module) -> None:
        self.steps += 1
        self.avg.update(model, step=self.steps)

    def of(self, model: nn.Module, module: nn.Module) -> nn.Module:
        """The average's counterpart of `module`: the model itself, or a part (a classifier)."""
        if module is model:
            return self.avg.module
        name = next(n for n, m in model.named_modules() if m is module)
        return self.avg.module.get_submodule(name)

    def state(self) -> dict:
        return {"weights": self.avg.module.state_dict(), "steps": self.steps}


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


class LossTally:
    """An epoch's batch losses, kept on the device and read in one sync every `every` batches and
    at the epoch's end. Reading each one (`loss.item()`) makes the CPU wait for the GPU at every
    step: a plain loop that never waits ran 1.45x our steps (resnet50, 224 px, bf16, an H200).
    A non-finite loss is still caught and named by its batch; the few steps after it, up to the
    check, are lost with the epoch, as a killed stage's are. All processes check together."""

    def __init__(self, acc: Accelerator, diverged: Callable[[int, float], Exception], every=32):
        self.acc, self.diverged, self.every = acc, diverged, every
        self.pending: list[torch.Tensor] = []  # loss x batch size of batches not read yet
        self.read_up_to, self.total, self.seen = 0, 0.0, 0

    def add(self, loss: torch.Tensor, n: int) -> None:
        self.pending.append(loss.detach().float() * n)
        self.seen += n
        if len(self.pending) >= self.every:
            self.read()

    def read(self) -> None:
        """One sync: the pending losses' sum, or the error naming the first non-finite batch."""
        if not self.pending:
            return
        sums = torch.stack(self.pending)
        bad = (~torch.isfinite(sums)).float()
        if self.acc.num_processes > 1:
            bad = self.acc.reduce(bad, reduction="sum")
        bad, sums = bad.cpu(), sums.cpu()
        if bad.any():
            j = int(bad.nonzero()[0])
            raise self.diverged(self.read_up_to + j, float(sums[j]))
        self.total += float(sums.sum())
        self.read_up_to += len(self.pending)
        self.pending = []

    def mean(self) -> float:
        self.read()
        return self.total / self.seen


class Criterion(nn.Module):
    """Softmax cross-entropy (or sigmoid BCE for multi-label) over class ids or probability
    vectors (soft targets), with class weights, label smoothing and optional per-item weights.

    Reduction: sum_i s_i * loss_i / sum_i n_i, where s_i is item i's weight (1 unless given, e.g.
    `pseudo.weight` for a pseudolabeled image) and n_i its class weight (w_y, or sum_c w_c y_c
    for a probability vector; 1 without class weights). With every s_i = 1 this is exactly torch's
    weighted mean, so a one-hot vector and its class id give the same loss.
    """

    def __init__(self, task: str, class_weights: torch.Tensor | None, label_smoothing: float):
        super().__init__()
        self.task, self.smoothing = task, label_smoothing
        self.register_buffer("weight", class_weights)

    def forward(self, logits: torch.Tensor, y: torch.Tensor, item_weights=None) -> torch.Tensor:
        logits = logits.float()
        if item_weights is None and (y.ndim == 1 or self.task == "multi_label"):
            return self._mean(logits, y)  # torch's own reduction: a teacher's exact numbers
        if self.task == "multi_label":
            per = nn.functional.binary_cross_entropy_with_logits(
                logits, y.float(), pos_weight=self.weight, reduction="none"
            ).mean(1)
            norm = torch.ones_like(per)
        else:
            per = nn.functional.cross_entropy(
                logits, y, weight=self.weight, label_smoothing=self.smoothing, reduction="none"
            )
            w = self.weight
            if w is None:
                w = torch.ones(logits.shape[1], device=logits.device)
            norm = w[y] if y.ndim == 1 else (y.float() * w).sum(1)
        if item_weights is not None:
            per = per * item_weights.to(per.dtype)
        return per.sum() / norm.sum()

    def _mean(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.task == "multi_label":
            return nn.functional.binary_cross_entropy_with_logits(
                logits, y.float(), pos_weight=self.weight
            )
        return nn.functional.cross_entropy(
            logits, y, weight=self.weight, label_smoothing=self.smoothing
        )


def loss_function(cfg: LoopConfig, device: torch.device) -> Criterion:
    weights = torch.tensor(cfg.class_weights, dtype=torch.float32) if cfg.class_weights else None
    return Criterion(cfg.task, weights, cfg.label_smoothing).to(device)


def batch_loss(net: nn.Module, batch, loss_fn: Criterion, acc: Accelerator) -> torch.Tensor:
    """A batch is (images, targets) or (images, targets, item weights) for a student."""
    x, y, *w = batch
    with acc.autocast():
        logits = net(x)
    return loss_fn(logits, y, w[0] if w else None)


def probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    return logits.sigmoid() if task == "multi_label" else logits.softmax(1)


def set_trainable(model: nn.Module, groups: list[dict]) -> None:
    trainable = {id(p) for g in groups for p in g["params"]}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)


def _train_mode(phase: Phase, net: nn.Module) -> None:
    net.train()
    for m in phase.frozen_bn:
        m.eval()  # frozen BatchNorm: running statistics stay exactly as loaded


def evaluate(net: nn.Module, loader: Loader, acc: Accelerator, loss_fn: nn.Module, task: str):
    """Mean loss, probabilities and targets over a loader (all ranks gathered)."""
    net.eval()
    logits, targets = [], []
    with torch.no_grad():
        for x, y in loader:
            out = acc.gather_for_metrics((net(x), y))
            logits.append(out[0].float())
            targets.append(out[1])
    lg, tg = torch.cat(logits), torch.cat(targets)
    loss = loss_fn(lg, tg).item()
    return loss, probabilities(lg, task).cpu().numpy(), tg.cpu().numpy()


def lr_range_test(
    phase: Phase, net: nn.Module, opt, loss_fn: nn.Module, acc: Accelerator, lf: LrFind,
    prepare: Callable[[Loader], Loader] | None = None,  # fit's Prepared; else acc.prepare
    k: int = 1,  # batches an optimizer step (train.accumulate): the LR found is for that step
) -> tuple[list[float], list[float]]:  # fmt: skip
    """Exponential LR sweep over training batches; returns (lrs, smoothed losses): one LR per
    optimizer step of k batches, its loss their mean.

    Every group moves with the same factor (differential ratios kept). Stops once the smoothed
    loss exceeds 4x its best. Model, optimizer and RNG state are restored exactly afterwards.
    Batches are not mixed (phase.mix): a batch is mixed by chance, and a mixed batch's loss has a
    floor near its soft targets' entropy, so the curve would jump between two levels at random
    and its valley would move with those draws, not with the LR; the divergence point that the
    test reads depends on the LR alone.
    """
    saved = (copy.deepcopy(net.state_dict()), copy.deepcopy(opt.state_dict()), _rng_state())
    top = max(g["lr"] for g in opt.param_groups)
    ratios = [g["lr"] / top for g in opt.param_groups]
    _train_mode(phase, net)
    lrs, raw, smoothed = [], [], []
    batches = _endless(phase, prepare or acc.prepare)
    for step in range(lf.steps):
        lr = schedules.lr_sweep(step, lf.steps, lf.start, lf.end)
        for g, r in zip(opt.param_groups, ratios, strict=True):
            g["lr"] = lr * r
        losses = []
        for j in range(k):  # one optimizer step, as in training: the LR is the step's
            loss = batch_loss(net, next(batches), loss_fn, acc)
            accumulate(net, opt, loss, j, k, k, acc)
            losses.append(acc.reduce(loss.detach(), reduction="mean").item())
        value = sum(losses) / k
        if not math.isfinite(value):
            break
        lrs.append(lr)
        raw.append(value)
        smoothed = schedules.smooth(raw)
        if smoothed[-1] > 4 * min(smoothed):
            break
    net.load_state_dict(saved[0])
    opt.load_state_dict(saved[1])
    _set_rng_state(saved[2])
    if len(lrs) < 3:
        raise PipelineError(
            f"LR range test of phase '{phase.name}' diverged after {len(lrs)} steps; "
            f"lower lr_find.start ({lf.start})"
        )
    return lrs, smoothed


def _endless(phase: Phase, prepare: Callable[[Loader], Loader]):
    """The first epoch's training batches, again and again (the LR range test's supply)."""
    while True:
        yield from prepare(phase.train_loader(0, max(1, phase.epochs)))


def steps_per_epoch(batches: int, k: int) -> int:
    """Optimizer steps of an epoch of `batches` batches, one every k (and one for the rest)."""
    return -(-batches // k)


def accumulate(net: nn.Module, opt, loss: torch.Tensor, i: int, n: int, k: int, acc) -> bool:
    """Batch i of an epoch's n adds its gradient to its group of k (train.accumulate); the
    group's last batch steps the optimizer (returns True). Each loss is divided by its group's
    batches, so a step's gradient is the mean of its batches' gradients: with equal batches
    and a mean loss, the gradient of one batch k times larger. When k does not divide n, the
    epoch's last group holds the n % k batches left and each is divided by that number, not
    by k: a step as large as any other, on fewer images (timm's train.py does the same); the
    epoch ends on a step, never with gradients carried into the next."""
    start = i - i % k
    size = min(k, n - start)
    if i == start:
        opt.zero_grad(set_to_none=True)
    last = i == start + size - 1
    with contextlib.nullcontext() if last else acc.no_sync(net):  # all-reduce once a step
        acc.backward(loss / size if size > 1 else loss)
    if last:
        opt.step()
    return last


def _set_lrs(opt, phase: Phase, peaks: list[float], step: int, steps: int, spe: int, cfg) -> None:
    """Schedule: every group follows its own peak; 1cycle moves beta1 opposite to the LR."""
    if phase.schedule == "sgdr":
        beta1 = 0.9
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
    hist, start, state = History(), 0, _load_checkpoint(ckpt, cfg.key)
    if state is None and ckpt.parent.exists() and acc.is_main_process:
        shutil.rmtree(ckpt.parent)  # left by other params or data: its best/snapshots are stale
    acc.wait_for_everyone()
    if state is not None:
        hist = History(
            state["rows"], state["best_score"], state["best_epoch"], state["lrs"], state["lr_tests"]
        )
        start = len(hist.rows)
        acc.print(f"resuming from {ckpt} at epoch {start + 1} (epochs 1-{start} done)")
        model.load_state_dict(state["model"])
        _set_rng_state(state["rng"])
        for phase_name, (lrs, losses, chosen) in hist.lr_tests.items():
            on_lr_find(phase_name, lrs, losses, chosen)  # the stage's outputs were wiped too
        for row in hist.rows:
            log(row)
    loss_fn, prepare = loss_function(cfg, acc.device), Prepared(acc)
    total, end, ema = sum(p.epochs for p in phases), 0, None
    for phase in phases:
        first, end = end, end + phase.epochs
        if start >= end:
            continue  # finished before the stage was killed
        set_trainable(model, phase.groups)
        opt = torch.optim.AdamW(
            [
                {"params": g["params"], "lr": g["lr"], "weight_decay": g["weight_decay"]}
                for g in phase.groups
            ],
            fused=True,  # one kernel for every tensor: the step is 5x faster on CPU here
        )
        net, opt = acc.prepare(phase.module, opt)
        if cfg.ema and ema is None:  # here: on the device the model trains on
            ema = Ema(model, cfg.ema, state and state.get("ema"))
        if state is not None and state["phase"] == phase.name:
            opt.load_state_dict(state["optimizer"])
        if phase.name not in hist.lrs:
            peaks = [g["lr"] for g in phase.groups]
            if phase.find_lr:
                lrs, losses = lr_range_test(
                    phase, net, opt, loss_fn, acc, cfg.lr_find, prepare, cfg.accumulate
                )
                chosen = schedules.suggest_lr(lrs, losses, cfg.lr_find.suggestion)
                peaks = [p * chosen / max(peaks) for p in peaks]
                acc.print(f"LR range test ({phase.name}): {cfg.lr_find.suggestion} {chosen:.3g}")
                on_lr_find(phase.name, lrs, losses, chosen)
                hist.lr_tests[phase.name] = [lrs, losses, chosen]
            hist.lrs[phase.name] = peaks
        peaks = hist.lrs[phase.name]
        cycle_ends = schedules.sgdr_cycle_ends(phase.epochs, cfg.cycle_len, cfg.cycle_mult)
        spe = None  # batches per epoch: the same rows and batch size every epoch of a phase
        for epoch in range(max(first, start), end):
            loader = prepare(phase.train_loader(epoch, total))
            spe = spe or len(loader)
            if len(loader) != spe:  # image size may change; the steps may not
                raise RuntimeError(f"epoch {epoch + 1}: {len(loader)} steps, not {spe}")
            ope = steps_per_epoch(spe, cfg.accumulate)  # optimizer steps: what schedules count
            _train_mode(phase, net)
            started, step_lrs = time.perf_counter(), []
            tally = LossTally(acc, _divergence(phase.name, epoch, step_lrs, cfg.accumulate))
            desc = f"{phase.name} epoch {epoch + 1}/{total}"
            batches = progress(loader, len(loader), desc, "batch", acc.is_main_process)
            waited, asked = 0.0, time.perf_counter()  # time spent waiting for the next batch
            for i, batch in enumerate(batches):
                waited += time.perf_counter() - asked
                if i % cfg.accumulate == 0:  # an optimizer step begins: its LR
                    step = (epoch - first) * ope + i // cfg.accumulate
                    _set_lrs(opt, phase, peaks, step, phase.epochs * ope, ope, cfg)
                    step_lrs.append(opt.param_groups[-1]["lr"])
                # --- forward, loss
                if phase.mix is not None:  # mixup/cutmix, by chance (the epoch's strength)
                    batch = phase.mix(batch, epoch, total)
                loss = batch_loss(net, batch, loss_fn, acc)
                tally.add(loss, len(batch[0]))  # a non-finite loss raises, within 32 batches
                # --- backward, step (every cfg.accumulate batches), the EMA after each step
                if accumulate(net, opt, loss, i, spe, cfg.accumulate, acc) and ema is not None:
                    ema.update(model)
                asked = time.perf_counter()
            train_loss = tally.mean()  # waits for the GPU's last step: the time below is real
            spent = time.perf_counter() - started
            images_per_s = tally.seen * acc.num_processes / spent
            # --- eval
            v_loss, probs, targets = evaluate(net, phase.valid_loader, acc, loss_fn, cfg.task)
            value = metric(probs, targets)
            score = value if cfg.maximize else -value
            row = {
                "epoch": epoch + 1,
                "phase": phase.name,
                "train_loss": train_loss,
                "valid_loss": v_loss,
                "images_per_s": images_per_s,  # training steps only, all processes
                "data_wait": waited / spent,  # share of the epoch spent waiting for the loader
                "valid_metric": value,  # natural sign: a log loss stays positive
                "lr": peaks[-1],
                "step_lrs": step_lrs,  # the head group's LR at every optimizer step of the epoch
            }
            kept, weights = score, model
            if ema is not None:  # the average too; the better of the two may be kept
                kept, weights = _validate_ema(ema, model, phase, acc, loss_fn, cfg, metric, row)
            hist.rows.append(row)
            if kept > hist.best_score:
                hist.best_score, hist.best_epoch = kept, epoch + 1
                on_best(weights, row)
            if phase.schedule == "sgdr" and epoch + 1 - first in cycle_ends:
                on_snapshot(model, cycle_ends.index(epoch + 1 - first))
            # --- checkpoint: everything needed to continue at the next epoch, then log
            if acc.is_main_process:
                _save_checkpoint(ckpt, cfg.key, phase.name, model, opt, hist, ema)
            acc.wait_for_everyone()
            log(row)
    return hist


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
        "rng": _rng_state(),
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

"""The LR range test (Smith; fastai's lr_find): an exponential LR sweep over training batches
before a phase whose LR is `auto`; pipeline/schedules.py reads the suggestion off its curve."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

from accelerate import Accelerator
from torch import nn

from pipeline import schedules
from pipeline.files import PipelineError
from pipeline.params import LrFind
from pipeline.steps import (
    Loader,
    Phase,
    accumulate,
    batch_loss,
    rng_state,
    set_rng_state,
    train_mode,
)

LOSS_LIMIT = 4.0  # the sweep stops once the smoothed loss exceeds this many times its best


def lr_range_test(
    phase: Phase, net: nn.Module, opt, loss_fn: nn.Module, acc: Accelerator, lf: LrFind,
    prepare: Callable[[Loader], Loader] | None = None,  # fit's Prepared; else acc.prepare
    k: int = 1,  # batches an optimizer step (train.accumulate): the LR found is for that step
) -> tuple[list[float], list[float]]:  # fmt: skip
    """Exponential LR sweep over training batches; returns (lrs, smoothed losses): one LR per
    optimizer step of k batches, its loss their mean.

    Every group moves with the same factor (differential ratios kept). Stops once the smoothed
    loss exceeds LOSS_LIMIT times its best. Model, optimizer and RNG state are restored exactly
    afterwards.
    Batches are not mixed (phase.mix): a batch is mixed by chance, and a mixed batch's loss has a
    floor near its soft targets' entropy, so the curve would jump between two levels at random
    and its valley would move with those draws, not with the LR; the divergence point that the
    test reads depends on the LR alone.
    """
    saved = (copy.deepcopy(net.state_dict()), copy.deepcopy(opt.state_dict()), rng_state())
    top = max(g["lr"] for g in opt.param_groups)
    ratios = [g["lr"] / top for g in opt.param_groups]
    train_mode(phase, net)
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
        if smoothed[-1] > LOSS_LIMIT * min(smoothed):
            break
    net.load_state_dict(saved[0])
    opt.load_state_dict(saved[1])
    set_rng_state(saved[2])
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

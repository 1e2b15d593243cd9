"""The pieces of one training step, shared by the loop (pipeline/loop.py) and the LR range test
(pipeline/lr_find.py): a phase, its loaders prepared once, the loss, a batch's forward and
backward with gradient accumulation, validation, the EMA of the weights, the running loss tally
and the RNG state a checkpoint keeps.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from accelerate import Accelerator
from timm.utils import ModelEmaV3
from torch import nn

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


def rng_state() -> dict:
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


def set_rng_state(s: dict) -> None:
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

    def __init__(
        self, task: str, class_weights: torch.Tensor | None, label_smoothing: float,
        online: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.task, self.smoothing = task, label_smoothing
        self.online = online  # pseudo.weighting: online: logits -> (targets, counted)
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


def batch_loss(net: nn.Module, batch, loss_fn: Criterion, acc: Accelerator) -> torch.Tensor:
    """A batch is (images, targets) or (images, targets, item weights) for a student, or with
    pseudo.weighting: online (+ weak views, whose targets are the student's own: online_loss)."""
    if len(batch) == 5:
        return online_loss(net, batch, loss_fn, acc)
    x, y, *w = batch
    with acc.autocast():
        logits = net(x)
    return loss_fn(logits, y, w[0] if w else None)


def online_loss(net: nn.Module, batch, loss_fn: Criterion, acc: Accelerator) -> torch.Tensor:
    """FixMatch's step: one forward over the batch and the weak views of its unlabeled images
    (rows `own`: data.two_views_batch), so that BatchNorm sees them together; each unlabeled
    image's target is the prediction on its weak view (no gradient: loss_fn.online), its weight
    kept where that prediction is confident and 0 elsewhere. Labeled rows keep theirs."""
    x, y, w, weak, own = batch
    with acc.autocast():
        logits = net(torch.cat([x, weak]))
    target, confident = loss_fn.online(logits[len(x) :].detach())
    y, w = y.clone(), w.clone()
    y[own] = target.to(y.dtype)
    w[own] = w[own] * confident.to(w.dtype)
    return loss_fn(logits[: len(x)], y, w)


def probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    return logits.sigmoid() if task == "multi_label" else logits.softmax(1)


def set_trainable(model: nn.Module, groups: list[dict]) -> None:
    trainable = {id(p) for g in groups for p in g["params"]}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)


def train_mode(phase: Phase, net: nn.Module) -> None:
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

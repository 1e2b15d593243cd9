"""The one training loop, written against accelerate (CPU, one GPU, several GPUs or nodes).

`fit` runs a list of phases (e.g. head only, then everything unfrozen). Each phase has its own
optimizer parameter groups, each group its own peak LR under a 1cycle schedule, with cyclical
momentum on Adam's beta1. After every epoch a checkpoint (model, optimizer, RNG, history) is
written outside the stage's DVC outputs, so a killed stage rerun with the same params resumes at
the next epoch. The best epoch by the competition metric is what the stage saves.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn

from pipeline import schedules
from pipeline.files import PipelineError, atomic_path


@dataclass
class Phase:
    name: str
    epochs: int
    groups: list[list[nn.Parameter]]  # optimizer param groups, the only trainable ones
    max_lrs: list[float]  # peak LR per group


@dataclass(frozen=True)
class LoopConfig:
    pct_start: float
    div: float
    final_div: float
    weight_decay: float
    label_smoothing: float
    key: str  # hash of everything that shapes training: a checkpoint resumes only on a match
    class_weights: list[float] | None = None


@dataclass
class History:
    rows: list[dict] = field(default_factory=list)  # one per finished epoch
    best_score: float = -float("inf")
    best_epoch: int = -1


def _rng_state() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.array(np.random.get_state()[1], dtype=np.int64)),
        "python": torch.tensor(random.getstate()[1], dtype=torch.int64),
    }


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(("MT19937", s["numpy"].numpy().astype(np.uint32), 624, 0, 0.0))
    random.setstate((3, tuple(int(v) for v in s["python"].tolist()), None))


def set_trainable(model: nn.Module, groups: list[list[nn.Parameter]]) -> None:
    trainable = {id(p) for g in groups for p in g}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)


def evaluate(model: nn.Module, loader, acc: Accelerator) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean cross-entropy, class probabilities and targets over a loader (all ranks gathered)."""
    model.eval()
    logits, targets = [], []
    with torch.no_grad():
        for x, y in loader:
            out = acc.gather_for_metrics((model(x), y))
            logits.append(out[0].float().cpu())
            targets.append(out[1].cpu())
    lg, tg = torch.cat(logits), torch.cat(targets)
    loss = nn.functional.cross_entropy(lg, tg).item()
    return loss, lg.softmax(1).numpy(), tg.numpy()


def fit(
    model: nn.Module,
    phases: list[Phase],
    train_loader: Callable[[int, int], torch.utils.data.DataLoader],  # (epoch, total) -> loader
    valid_loader: torch.utils.data.DataLoader,
    cfg: LoopConfig,
    metric: Callable[[np.ndarray, np.ndarray], float],  # (probs, targets) -> higher is better
    acc: Accelerator,
    ckpt: Path,
    log: Callable[[dict], None],  # receives each epoch's row, also the ones replayed on resume
    on_best: Callable[[nn.Module, dict], None],  # called with the model when an epoch is best
) -> History:
    hist, start = History(), 0
    state = _load_checkpoint(ckpt, cfg.key)
    if state is not None:
        hist = History(state["rows"], state["best_score"], state["best_epoch"])
        start = len(hist.rows)
        acc.print(f"resuming from {ckpt} at epoch {start + 1} (epochs 1-{start} done)")
        model.load_state_dict(state["model"])
        _set_rng_state(state["rng"])
        for row in hist.rows:
            log(row)
    weights = torch.tensor(cfg.class_weights) if cfg.class_weights else None
    loss_fn = nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing)
    loss_fn = loss_fn.to(acc.device)
    total_epochs, epoch0 = sum(p.epochs for p in phases), 0
    for phase in phases:
        first, epoch0 = epoch0, epoch0 + phase.epochs
        if start >= epoch0:
            continue  # phase finished before the stage was killed
        set_trainable(model, phase.groups)
        pairs = zip(phase.groups, phase.max_lrs, strict=True)
        groups = [{"params": g, "lr": lr} for g, lr in pairs]
        opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        net, opt = acc.prepare(model, opt)
        if state is not None and state["phase"] == phase.name:
            opt.load_state_dict(state["optimizer"])
        steps = phase.epochs * len(acc.prepare(train_loader(first, total_epochs)))
        for epoch in range(max(first, start), epoch0):
            loader = acc.prepare(train_loader(epoch, total_epochs))
            net.train()
            seen, loss_sum = 0, 0.0
            for i, (x, y) in enumerate(loader):
                step = (epoch - first) * len(loader) + i
                # --- schedule: every group follows 1cycle to its own peak; beta1 opposite
                beta1 = schedules.one_cycle_momentum(step, steps, cfg.pct_start)
                for g, max_lr in zip(opt.param_groups, phase.max_lrs, strict=True):
                    g["lr"] = schedules.one_cycle_lr(
                        step, steps, max_lr, cfg.pct_start, cfg.div, cfg.final_div
                    )
                    g["betas"] = (beta1, g["betas"][1])
                # --- forward, loss
                with acc.autocast():
                    loss = loss_fn(net(x), y)
                if not torch.isfinite(loss):
                    raise PipelineError(
                        f"loss is {loss.item()} in phase '{phase.name}', epoch {epoch + 1}, "
                        f"step {i + 1}, lr {opt.param_groups[-1]['lr']:.3g}: lower train.lr "
                        "(the LR range test suggests one)"
                    )
                # --- backward, step
                opt.zero_grad(set_to_none=True)
                acc.backward(loss)
                opt.step()
                seen += len(y)
                loss_sum += loss.item() * len(y)
            # --- eval
            v_loss, probs, targets = evaluate(net, valid_loader, acc)
            score = metric(probs, targets)
            row = {
                "epoch": epoch + 1,
                "phase": phase.name,
                "train_loss": loss_sum / seen,
                "valid_loss": v_loss,
                "valid_metric": score,
            }
            hist.rows.append(row)
            log(row)
            if score > hist.best_score:
                hist.best_score, hist.best_epoch = score, epoch + 1
                on_best(acc.unwrap_model(net), row)
            # --- checkpoint: everything needed to continue at the next epoch
            if acc.is_main_process:
                _save_checkpoint(ckpt, cfg.key, phase.name, acc.unwrap_model(net), opt, hist)
            acc.wait_for_everyone()
    return hist


def _save_checkpoint(path: Path, key: str, phase: str, model, opt, hist: History) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "key": key,
        "phase": phase,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "rows": hist.rows,
        "best_score": hist.best_score,
        "best_epoch": hist.best_epoch,
        "rng": _rng_state(),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(path: Path, key: str) -> dict | None:
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)  # no arbitrary unpickling
    if state.get("key") != key:
        return None  # written under other params or data: start afresh
    return state

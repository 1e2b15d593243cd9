"""train: fine-tune one timm backbone on one fold's training rows and keep its best epoch.

    python -m pipeline train --model resnet10t --fold 0
    accelerate launch -m pipeline train --model resnet10t --fold 0    # several GPUs or nodes

Phase 1 (`head.epochs`): everything but the classifier frozen — optionally on backbone features
computed once (`head.precompute`). Phase 2 (`train.epochs`): all layer groups trainable with
learning rates spread geometrically from lr / lr_mult (input side) to lr (head), under 1cycle or
SGDR. `lr: auto` runs the LR range test before the phase.

Reads base, model, head, lr_find, train, augment and competition.metric from params.yaml. Writes
models/<model>/fold<k>/ (model.safetensors of the best epoch by the competition metric on the
fold's validation rows, model.json, SGDR snapshots) and dvclive/<model>/fold<k>/ (per-epoch
metrics, LR range test curves). A checkpoint after every epoch lives in checkpoints/ (outside
DVC's outputs), so a killed run resumes at the epoch it was in.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from dvclive import Live
from safetensors.torch import load_file
from torch import nn

from pipeline import metrics, model, schedules
from pipeline.data import balanced_sampler, build_transforms, class_weights, split_dataset
from pipeline.files import PipelineError, atomic_dir
from pipeline.index import FOLDS, encode_labels, fold_rows, read_folds, read_index
from pipeline.loop import LoopConfig, Phase, fit
from pipeline.params import Params, Train, load_params

SECTIONS = ("base", "model", "head", "lr_find", "train", "augment")  # what shapes the weights


def fingerprint(p: Params, name: str, fold: int, *files: Path) -> str:
    """Hash of every param and input file that shapes this run: resume only on an exact match."""
    h = hashlib.sha256()
    sections = {k: getattr(p, k).model_dump() for k in SECTIONS}
    sections["train"] = p.train.model_dump(exclude={"backbones", "num_workers"})  # no effect
    sections["base"] = p.base.model_dump(exclude={"folds"})  # folds.csv itself is hashed
    h.update(json.dumps([sections, p.competition.metric, name, fold], sort_keys=True).encode())
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def check_task_settings(tc: Train, task: str) -> None:
    """Settings that only make sense for single-label tasks stop a multi-label run, named."""
    if task != "multi_label":
        return
    for key, value, ok in (
        ("train.sampler", tc.sampler, "shuffle"),
        ("train.class_weights", tc.class_weights, ("none", "balanced")),
        ("train.label_smoothing", tc.label_smoothing, 0.0),
    ):
        if value not in (ok if isinstance(ok, tuple) else (ok,)):
            raise PipelineError(
                f"params.yaml: {key}: {value!r} is for single-label tasks; this competition is "
                f"multi-label (use {ok!r})"
            )


def epoch_seed(seed: int, fold: int, epoch: int) -> int:
    """Seed of one epoch's shuffling and augmentation: the same draws again after a resume."""
    return int(np.random.SeedSequence([seed, fold, epoch]).generate_state(1)[0])


def optimizer_groups(name: str, params: list[nn.Parameter], lr: float, wd: float) -> list[dict]:
    """A layer group as two optimizer groups: weight decay on weights, none on norms/biases."""
    decay = [p for p in params if p.ndim > 1]
    rest = [p for p in params if p.ndim <= 1]
    return [
        {"name": name, "params": ps, "lr": lr, "weight_decay": w}
        for ps, w in ((decay, wd), (rest, 0.0))
        if ps
    ]


@torch.no_grad()
def features(net: nn.Module, loader, acc: Accelerator) -> torch.Tensor:
    """Pooled pre-logits features: what the classifier sees, computed once (eval mode)."""
    net.eval()
    out = []
    for x, _ in loader:
        with acc.autocast():
            out.append(net.forward_head(net.forward_features(x.to(acc.device)), pre_logits=True))
    return torch.cat(out).float().cpu()


def weights_checksum(m: nn.Module, acc: Accelerator) -> list[float]:
    """One number per process; equal numbers mean the replicas ended with the same weights."""
    total = sum(p.detach().double().sum() for p in m.parameters()).reshape(1).to(acc.device)
    return acc.gather(total).cpu().tolist()


def run(
    p: Params,
    name: str,
    fold: int,
    models_dir: Path = Path("models"),
    live_dir: Path = Path("dvclive"),
    ckpt_dir: Path = Path("checkpoints"),
) -> None:
    tc, hc = p.train, p.head
    gpu = torch.cuda.is_available()
    acc = Accelerator(cpu=not gpu, mixed_precision=tc.mixed_precision if gpu else "no")
    set_seed(p.base.seed + fold)
    index = read_index()
    task, classes = index.meta.get("task", "single_label"), index.classes
    check_task_settings(tc, task)
    train_rows, valid_rows = fold_rows(index, read_folds(), fold)
    net = model.create(name, len(classes), p.model.pretrained, p.model.drop_rate)
    if gpu:
        net = net.to(memory_format=torch.channels_last)
    norm = model.data_config(net, p.model.mean, p.model.std)
    size = model.input_size(net, p.base.image_size)
    cache = index.images("train")
    if cache is not None and cache.shape[1] < size:
        acc.print(
            f"warning: images were cached at {cache.shape[1]} px (prepare.cache_size) and are "
            f"enlarged to the {size} px input; set prepare.cache_size >= {size} to keep detail"
        )
    targets = encode_labels(index.train["label"].iloc[train_rows], classes, task)
    weights = class_weights(targets, len(classes), tc.class_weights, tc.effective_beta)
    if weights is not None:
        acc.print(
            f"class weights ({tc.class_weights}): "
            + ", ".join(f"{c}={w:.3f}" for c, w in zip(classes, weights, strict=True))
        )

    def train_loader(epoch: int, total: int) -> torch.utils.data.DataLoader:
        # augmentation grows harsher over training: strength is a pure function of the epoch
        strength = schedules.linear(epoch, total, p.augment.strength_start, p.augment.strength_end)
        seed = epoch_seed(p.base.seed, fold, epoch)
        tf = build_transforms("train", strength, p.augment, **norm, seed=seed)
        ds = split_dataset(index, "train", train_rows, tf, size)
        sampler = balanced_sampler(targets, seed) if tc.sampler == "balanced" else None
        g = torch.Generator().manual_seed(seed)
        return torch.utils.data.DataLoader(
            ds,
            batch_size=tc.batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            generator=g,
            drop_last=len(ds) > tc.batch_size,
            num_workers=tc.num_workers,
        )

    plain = build_transforms("valid", 0, None, **norm)
    valid_ds = split_dataset(index, "train", valid_rows, plain, size)
    valid = acc.prepare(
        torch.utils.data.DataLoader(
            valid_ds, batch_size=tc.batch_size * 2, num_workers=tc.num_workers
        )
    )
    groups = model.layer_groups(net, p.model.n_groups)
    head_params = groups[-1][1]
    phases = []
    if hc.epochs:
        head_lr = 1e-3 if hc.lr == "auto" else hc.lr  # auto: the range test rescales it
        head = Phase(
            "head",
            hc.epochs,
            net,
            optimizer_groups("head", head_params, head_lr, tc.weight_decay),
            train_loader,
            valid,
            find_lr=hc.lr == "auto",
        )
        if hc.precompute:  # the backbone is fully frozen: run it once, train the classifier
            train_plain = split_dataset(index, "train", train_rows, plain, size)
            loader = torch.utils.data.DataLoader(train_plain, batch_size=tc.batch_size * 2)
            f_train = features(net.to(acc.device), loader, acc)
            f_valid = features(
                net, torch.utils.data.DataLoader(valid_ds, batch_size=tc.batch_size * 2), acc
            )
            y_valid = torch.as_tensor(valid_ds.labels)
            feats = torch.utils.data.TensorDataset(f_train, torch.as_tensor(targets))

            def feature_loader(epoch: int, total: int) -> torch.utils.data.DataLoader:
                g = torch.Generator().manual_seed(epoch_seed(p.base.seed, fold, epoch))
                return torch.utils.data.DataLoader(
                    feats,
                    batch_size=tc.batch_size,
                    shuffle=True,
                    generator=g,
                    drop_last=len(feats) > tc.batch_size,
                )

            head.module, head.train_loader = net.get_classifier(), feature_loader
            head.valid_loader = acc.prepare(
                torch.utils.data.DataLoader(
                    torch.utils.data.TensorDataset(f_valid, y_valid), batch_size=tc.batch_size * 2
                )
            )
        elif hc.train_bn:  # fastai's default: frozen groups' BatchNorm keeps learning
            bn = [q for m in model.batchnorm_modules(net, head_params) for q in m.parameters()]
            head.groups += optimizer_groups("bn", bn, head_lr, tc.weight_decay)
        else:  # frozen BatchNorm: parameters and running statistics stay as loaded
            head.frozen_bn = model.batchnorm_modules(net, head_params)
        phases.append(head)
    full_lr = 1e-3 if tc.lr == "auto" else tc.lr
    peaks = schedules.geometric_lrs(full_lr, tc.lr_mult, len(groups))
    full_groups = [
        g
        for (n, ps), lr in zip(groups, peaks, strict=True)
        for g in optimizer_groups(n, ps, lr, tc.weight_decay)
    ]
    phases.append(
        Phase(
            "full",
            tc.epochs,
            net,
            full_groups,
            train_loader,
            valid,
            schedule=tc.schedule,
            find_lr=tc.lr == "auto",
        )
    )
    trainable = {ph.name: {g["name"] for g in ph.groups} for ph in phases}
    acc.print(
        f"{name} fold {fold}: {len(train_rows)} train / {len(valid_rows)} valid rows, "
        f"{len(groups)} layer groups\n{model.summary(groups, trainable)}"
    )

    cfg = LoopConfig(
        task=task,
        pct_start=tc.pct_start,
        div=tc.div,
        final_div=tc.final_div,
        cycle_len=tc.cycle_len,
        cycle_mult=tc.cycle_mult,
        label_smoothing=tc.label_smoothing,
        lr_find=p.lr_find,
        class_weights=None if weights is None else [float(w) for w in weights],
        key=fingerprint(p, name, fold, index.root / "train.csv", FOLDS),
    )
    ckpt = ckpt_dir / name / f"fold{fold}"
    live_path = live_dir / name / f"fold{fold}"
    live = (
        Live(dir=str(live_path), dvcyaml=None, save_dvc_exp=False, report=None)
        if acc.is_main_process
        else None
    )
    metric_name = p.competition.metric

    def log(row: dict) -> None:
        acc.print(
            f"{name} fold {fold} epoch {row['epoch']:>3} [{row['phase']}] "
            f"train_loss {row['train_loss']:.4f} valid_loss {row['valid_loss']:.4f} "
            f"valid_{metric_name} {row['valid_metric']:.4f} ({row['images_per_s']:.0f} img/s)"
        )
        if live is not None:
            live.log_metric("train_loss", row["train_loss"])
            live.log_metric("valid_loss", row["valid_loss"])
            live.log_metric(f"valid_{metric_name}", row["valid_metric"])
            live.log_metric("peak_lr", row["lr"])
            live.log_metric("images_per_s", row["images_per_s"])
            live.next_step()

    def on_lr_find(phase: str, lrs: list[float], losses: list[float], chosen: float) -> None:
        if live is not None:
            curve = "lr\tloss\n" + "".join(
                f"{a:.6g}\t{b:.6g}\n" for a, b in zip(lrs, losses, strict=True)
            )
            (live_path / "plots" / "lr_find").mkdir(parents=True, exist_ok=True)
            (live_path / "plots" / "lr_find" / f"{phase}.tsv").write_text(curve)
            live.summary.setdefault("lr_find", {})[phase] = chosen

    def on_best(m: nn.Module, row: dict) -> None:
        if acc.is_main_process:
            model.save_weights(m, ckpt / "best.safetensors")

    def on_snapshot(m: nn.Module, cycle: int) -> None:
        if acc.is_main_process:
            model.save_weights(m, ckpt / "snapshots" / f"cycle{cycle}.safetensors")

    def metric(probs: np.ndarray, t: np.ndarray) -> float:
        return metrics.score(metric_name, probs, t)

    hist = fit(
        net, phases, cfg, metric, acc, ckpt / "state.pt", log, on_best, on_lr_find, on_snapshot
    )
    sums = weights_checksum(net, acc)
    if len(sums) > 1:
        if len(set(sums)) != 1:
            raise RuntimeError(f"replicas diverged: weight checksums {sums}")
        acc.print(f"weights identical on {len(sums)} processes (checksum {sums[0]:.6f})")
    if acc.is_main_process:
        best = hist.rows[hist.best_epoch - 1]
        acc.print(
            f"{name} fold {fold}: best epoch {hist.best_epoch} [{best['phase']}] "
            f"(valid_{metric_name} {best['valid_metric']:.4f}) is the one kept"
        )
        net.load_state_dict(load_file(str(ckpt / "best.safetensors")))
        out = models_dir / name / f"fold{fold}"
        with atomic_dir(out) as tmp:  # weights, model.json and snapshots appear together
            model.save(
                net,
                tmp,
                {
                    "name": name,
                    "fold": fold,
                    "task": task,
                    "classes": classes,
                    "image_size": size,
                    "mean": list(norm["mean"]),
                    "std": list(norm["std"]),
                    "metric": metric_name,
                    "best_epoch": hist.best_epoch,
                    "best_valid_metric": best["valid_metric"],
                    "phase_lrs": hist.lrs,
                },
            )
            if (ckpt / "snapshots").exists():
                shutil.copytree(ckpt / "snapshots", tmp / "snapshots")
        live.summary["best_epoch"] = hist.best_epoch
        live.end()
        shutil.rmtree(ckpt)  # finished: the next run with these params starts afresh
    acc.wait_for_everyone()


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipeline train")
    ap.add_argument("--model", required=True)
    ap.add_argument("--fold", type=int, required=True)
    a = ap.parse_args(argv)
    run(load_params(), a.model, a.fold)

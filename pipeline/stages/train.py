"""train: fit one timm backbone on one fold's training rows, keep its best epoch.

    python -m pipeline train --model resnet10t --fold 0
    accelerate launch -m pipeline train --model resnet10t --fold 0    # several GPUs or nodes

Reads base, model, train, augment and competition.metric from params.yaml. Writes
models/<model>/fold<k>/{model.safetensors,model.json} (the best epoch by the competition metric on
the fold's validation rows) and per-epoch metrics to dvclive/<model>/fold<k>/. A checkpoint after
every epoch lives in checkpoints/ (outside DVC's outputs), so a killed run resumes where it was.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import load_file, save_file

from dvclive import Live
from pipeline import metrics, model, schedules
from pipeline.data import build_transforms, fold_rows, read_folds, read_index, split_dataset
from pipeline.files import atomic_path
from pipeline.loop import LoopConfig, Phase, fit
from pipeline.params import Params, load_params


def fingerprint(p: Params, name: str, fold: int, *files: Path) -> str:
    """Hash of every param and input file that shapes this run: resume only on an exact match."""
    h = hashlib.sha256()
    sections = {k: getattr(p, k).model_dump() for k in ("base", "model", "train", "augment")}
    h.update(json.dumps([sections, p.competition.metric, name, fold], sort_keys=True).encode())
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def run(
    p: Params,
    name: str,
    fold: int,
    models_dir: Path = Path("models"),
    live_dir: Path = Path("dvclive"),
    ckpt_dir: Path = Path("checkpoints"),
) -> None:
    tc = p.train
    acc = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=tc.mixed_precision if torch.cuda.is_available() else "no",
    )
    set_seed(p.base.seed + fold)
    index = read_index()
    train_rows, valid_rows = fold_rows(index, read_folds(), fold)
    net = model.create(name, len(index.classes), p.model.pretrained, p.model.drop_rate)
    if acc.device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    norm = model.data_config(net)
    size = p.base.image_size

    def train_loader(epoch: int, total: int) -> torch.utils.data.DataLoader:
        # augmentation grows harsher over training: strength is a pure function of the epoch
        strength = schedules.linear(epoch, total, p.augment.strength_start, p.augment.strength_end)
        tf = build_transforms("train", strength, p.augment, **norm)
        ds = split_dataset(index, "train", train_rows, tf, size)
        g = torch.Generator().manual_seed(p.base.seed * 1000 + epoch)  # same order after resume
        return torch.utils.data.DataLoader(
            ds,
            batch_size=tc.batch_size,
            shuffle=True,
            drop_last=len(ds) > tc.batch_size,
            generator=g,
            num_workers=tc.num_workers,
        )

    valid_ds = split_dataset(
        index, "train", valid_rows, build_transforms("valid", 0, p.augment, **norm), size
    )
    valid = acc.prepare(
        torch.utils.data.DataLoader(
            valid_ds, batch_size=tc.batch_size * 2, num_workers=tc.num_workers
        )
    )
    phases = [Phase("full", tc.epochs, [list(net.parameters())], [tc.lr])]
    cfg = LoopConfig(
        pct_start=tc.pct_start,
        div=tc.div,
        final_div=tc.final_div,
        weight_decay=tc.weight_decay,
        label_smoothing=tc.label_smoothing,
        key=fingerprint(p, name, fold, index.root / "train.csv", Path("folds/folds.csv")),
    )
    ckpt = ckpt_dir / name / f"fold{fold}"
    best_file = ckpt / "best.safetensors"
    live = (
        Live(
            dir=str(live_dir / name / f"fold{fold}"), dvcyaml=None, save_dvc_exp=False, report=None
        )
        if acc.is_main_process
        else None
    )

    def log(row: dict) -> None:
        acc.print(
            f"{name} fold {fold} epoch {row['epoch']:>3} [{row['phase']}] "
            f"train_loss {row['train_loss']:.4f} valid_loss {row['valid_loss']:.4f} "
            f"valid_{p.competition.metric} {row['valid_metric']:.4f}"
        )
        if live is not None:
            for k in ("train_loss", "valid_loss", "valid_metric"):
                live.log_metric(
                    k if k != "valid_metric" else f"valid_{p.competition.metric}", row[k]
                )
            live.next_step()

    def on_best(m: torch.nn.Module, row: dict) -> None:
        if acc.is_main_process:
            ckpt.mkdir(parents=True, exist_ok=True)
            with atomic_path(best_file) as tmp:
                save_file(
                    {k: v.detach().cpu().contiguous() for k, v in m.state_dict().items()}, str(tmp)
                )

    metric = lambda probs, t: metrics.score(p.competition.metric, probs, t)  # noqa: E731
    hist = fit(net, phases, train_loader, valid, cfg, metric, acc, ckpt / "state.pt", log, on_best)
    if acc.is_main_process:
        net.load_state_dict(load_file(str(best_file)))
        best = hist.rows[hist.best_epoch - 1]
        acc.print(
            f"{name} fold {fold}: best epoch {hist.best_epoch} "
            f"(valid_{p.competition.metric} {best['valid_metric']:.4f}) is the one kept"
        )
        model.save(
            net,
            models_dir / name / f"fold{fold}",
            {
                "name": name,
                "fold": fold,
                "classes": index.classes,
                "image_size": size,
                "mean": list(norm["mean"]),
                "std": list(norm["std"]),
                "best_epoch": hist.best_epoch,
                "best_valid_metric": best["valid_metric"],
                "metric": p.competition.metric,
            },
        )
        live.end()
        shutil.rmtree(ckpt)  # finished: the next run with these params starts afresh
    acc.wait_for_everyone()


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipeline train")
    ap.add_argument("--model", required=True)
    ap.add_argument("--fold", type=int, required=True)
    a = ap.parse_args(argv)
    run(load_params(), a.model, a.fold)

"""The record of one training run: dvclive's metrics and plots, the best weights and their
model.json, SGDR snapshots, the plain (no-TTA) predictions of the kept weights.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from accelerate import Accelerator
from safetensors.torch import load_file
from torch import nn

from pipeline import curves, model
from pipeline.batches import FoldData
from pipeline.files import PipelineError, atomic_dir
from pipeline.inference import predict_split
from pipeline.params import Tta
from pipeline.preds import write_preds
from pipeline.roles import PLAIN


def open_live(live: type, path: Path):
    """dvclive's logger for one run. It asks git for the current commit, which a repository made
    with `git init` and never committed does not have: a plain line says what to do."""
    from scmrepo.exceptions import SCMError  # here: dvc's git layer, loaded with dvclive

    try:
        return live(dir=str(path), dvcyaml=None, save_dvc_exp=False, report=None)
    except SCMError as e:
        raise PipelineError(
            f"git in {Path.cwd()}: {e} (dvclive reads the current commit); commit once "
            "(`git add -A && git commit -m init`) or remove the empty .git, then rerun"
        ) from e


class Recorder:
    """Prints and logs every epoch (dvclive), keeps the best weights and the SGDR snapshots."""

    def __init__(
        self, title: str, metric: str, live_path: Path, ckpt: Path, acc: Accelerator,
        schedule: Callable[[int], dict],  # 0-based epoch -> its augmentation strength and size
    ):  # fmt: skip
        self.title, self.metric, self.acc, self.schedule = title, metric, acc, schedule
        self.live_path, self.ckpt = live_path, ckpt
        self.steps: list[str] = []  # plots/schedule.tsv: the LR of every optimizer step
        from dvclive import Live  # here: the loaders and the model need neither dvclive nor dvc

        self.live = open_live(Live, live_path) if acc.is_main_process else None

    def log(self, row: dict) -> None:
        sched = self.schedule(row["epoch"] - 1)
        self.acc.print(
            f"{self.title} epoch {row['epoch']:>3} [{row['phase']}] "
            f"train_loss {row['train_loss']:.4f} valid_loss {row['valid_loss']:.4f} "
            f"valid_{self.metric} {row['valid_metric']:.4f}{ema_note(row, self.metric)} "
            f"({row['images_per_s']:.0f} img/s, "
            f"{row.get('data_wait', 0):.0%} waiting for data, "
            f"augment {sched['augment_strength']:.2f}, {sched['image_size']} px)"
        )
        if self.live is not None:
            self.live.log_metric("train_loss", row["train_loss"])
            self.live.log_metric("valid_loss", row["valid_loss"])
            self.live.log_metric(f"valid_{self.metric}", row["valid_metric"])
            if "ema_valid_metric" in row:  # train.ema: the average's curves beside the raw ones
                self.live.log_metric("ema_valid_loss", row["ema_valid_loss"])
                self.live.log_metric(f"ema_valid_{self.metric}", row["ema_valid_metric"])
            self.live.log_metric("peak_lr", row["lr"])
            self.live.log_metric("images_per_s", row["images_per_s"])
            self.live.log_metric("data_wait", row.get("data_wait", 0.0))
            for k, v in sched.items():
                self.live.log_metric(k, v)
            self.live.next_step()
            self.log_steps(row, sched["augment_strength"])

    def log_steps(self, row: dict, strength: float) -> None:
        """The head group's LR at every step (the schedule itself, not only its peak)."""
        first = len(self.steps)
        self.steps += [
            f"{first + i}\t{row['epoch']}\t{row['phase']}\t{lr:.6g}\t{strength:.4g}\n"
            for i, lr in enumerate(row["step_lrs"])
        ]
        head = "step\tepoch\tphase\tlr\taugment_strength\n"
        (self.live_path / "plots" / "schedule.tsv").write_text(head + "".join(self.steps))

    def keep(self, best: dict, epoch: int) -> None:
        """metrics.json describes the kept epoch, not the last one logged."""
        s = self.live.summary
        s.update(train_loss=best["train_loss"], valid_loss=best["valid_loss"])
        s[f"valid_{self.metric}"] = best["valid_metric"]
        s.update(peak_lr=best["lr"], images_per_s=best["images_per_s"], best_epoch=epoch)
        if "ema_valid_metric" in best:  # the average's at the kept epoch, and which was kept
            s.update(ema_valid_loss=best["ema_valid_loss"], kept_weights=best["kept_weights"])
            s[f"ema_valid_{self.metric}"] = best["ema_valid_metric"]
        s.update(self.schedule(epoch - 1))
        s["step"] = epoch - 1  # dvclive's step of that epoch

    def lr_find(self, phase: str, lrs: list[float], losses: list[float], chosen: float) -> None:
        if self.live is not None:
            curve = "lr\tloss\n" + "".join(
                f"{a:.6g}\t{b:.6g}\n" for a, b in zip(lrs, losses, strict=True)
            )
            (self.live_path / "plots" / "lr_find").mkdir(parents=True, exist_ok=True)
            (self.live_path / "plots" / "lr_find" / f"{phase}.tsv").write_text(curve)
            self.live.summary.setdefault("lr_find", {})[phase] = chosen

    def best(self, m: nn.Module, row: dict) -> None:
        if self.acc.is_main_process:
            model.save_weights(m, self.ckpt / "best.safetensors")

    def snapshot(self, m: nn.Module, cycle: int) -> None:
        if self.acc.is_main_process:
            model.save_weights(m, self.ckpt / "snapshots" / f"cycle{cycle}.safetensors")


def ema_note(row: dict, metric: str) -> str:
    """The EMA's score in an epoch's line, with the weights that scored better (train.ema)."""
    if "ema_valid_metric" not in row:
        return ""
    return f" ema_valid_{metric} {row['ema_valid_metric']:.4f} (better: {row['kept_weights']})"


def kept_score(row: dict) -> tuple[str, float]:
    """Which weights an epoch's row keeps (raw, or the EMA with train.ema), and their score."""
    if row.get("kept_weights") == "ema":
        return "ema", row["ema_valid_metric"]
    return "raw", row["valid_metric"]


NO_TTA = Tta(views=[], random=0, random_strength=0.0, combine="probs", beta=1.0, batch_size=256)


def write_plain(net: nn.Module, folder: Path, info: dict, d: FoldData, device) -> None:
    """plain/ oof and test predictions (and plain/snapshots/cycle<i>/) without TTA, of the kept
    weights and every SGDR snapshot: what predict takes when there is no TTA, loading no model."""
    sets = [("", None), *((f"snapshots/{s.stem}", s) for s in
                          sorted((folder / "snapshots").glob("cycle*.safetensors")))]  # fmt: skip
    splits = {
        "oof": ("train", d.valid_rows, d.index.train["id"].iloc[d.valid_rows]),
        "test": ("test", np.arange(len(d.index.test)), d.index.test["id"]),
    }
    net.eval()
    for sub, weights in sets:
        if weights is not None:
            net.load_state_dict(load_file(str(weights)))
        for name, (split, rows, ids) in splits.items():
            probs = predict_split(net, d.index, split, rows, NO_TTA, info, device)["plain"]
            write_preds(folder / PLAIN / sub, name, ids, probs, info["classes"])


def save_outputs(net, hist, rec: Recorder, out: Path, info: dict, about: str, d: FoldData) -> None:
    """The kept epoch's weights, model.json, summary.txt, snapshots and plain predictions,
    replacing `out` whole."""
    best = hist.rows[hist.best_epoch - 1]
    reading = curves.verdict([r["valid_loss"] for r in hist.rows])
    weights, score = kept_score(best)
    of = " of the EMA weights" if weights == "ema" else ""
    rec.acc.print(
        f"{rec.title}: best epoch {hist.best_epoch} [{best['phase']}] "
        f"(valid_{rec.metric} {score:.4f}{of}) is the one kept; learning curve: {reading}"
    )
    net.load_state_dict(load_file(str(rec.ckpt / "best.safetensors")))
    info = {**info, "best_epoch": hist.best_epoch, "best_valid_metric": score}
    if "ema_valid_metric" in best:  # train.ema: both scores of the kept epoch, and which won
        info.update(kept_weights=weights, raw_valid_metric=best["valid_metric"],
                    ema_valid_metric=best["ema_valid_metric"])  # fmt: skip
    info["learning_curve"] = reading
    with atomic_dir(out) as tmp:  # weights, model.json and snapshots appear together
        model.save(net, tmp, {**info, "phase_lrs": hist.lrs})
        (tmp / "summary.txt").write_text(about + "\n")
        if (rec.ckpt / "snapshots").exists():
            shutil.copytree(rec.ckpt / "snapshots", tmp / "snapshots")
        write_plain(net, tmp, info, d, rec.acc.device)
    rec.keep(best, hist.best_epoch)
    rec.live.summary["learning_curve"] = reading
    rec.live.end()
    shutil.rmtree(rec.ckpt)  # finished: the next run with these params starts afresh

"""predict: out-of-fold and test probabilities of one trained model, with TTA.

    python -m pipeline predict --model resnet10t --fold 0             # reads tta.* from params
    python -m pipeline predict --model resnet10t --fold 0 --student   # fold 0's student

TTA: the plain prediction is blended with the mean over augmented views (fastai's `beta`):
    final = beta * plain + (1 - beta) * mean(views)
Named views are tensor ops applied to each batch on the device; `tta.random` adds draws of the
training augmentation at `tta.random_strength` (albumentations, in the loader). Views average as
probabilities or as logits (`tta.combine`). `tta.beta: auto` picks the best of 0, 0.1, …, 1 by
competition.metric on the fold's OOF rows (ties: the lower log loss).

Writes preds/<model>/fold<k>/ (students: students/preds/...): oof.csv (the fold's validation
rows) and test.csv, each an id column and one probability column per class, as blended;
oof_plain.csv and test_plain.csv without TTA; views.npz (every view's probabilities, for tuning);
tta.json (views, beta, the OOF metric of plain, TTA and the blend); and for SGDR models
snapshots/cycle<i>/{oof,test}.csv, the same TTA over each snapshot. Only `tta` and
competition.metric are read from params, so changing them reruns predict and what follows, never
training.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from pipeline import metrics, model
from pipeline.data import build_transforms, split_dataset
from pipeline.files import atomic_dir, write_csv, write_json
from pipeline.index import Index, encode_labels, fold_rows, read_folds, read_index
from pipeline.loop import probabilities
from pipeline.params import Augment, Params, Tta, load_params
from pipeline.progress import progress
from pipeline.roles import STUDENT, TEACHER, Role, skipped, write_skips

BETAS = np.round(np.linspace(0, 1, 11), 2)
EPS = 1e-7


def _shift(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Translate a batch by whole pixels, padding with the edge (no wrap-around)."""
    p = max(abs(dx), abs(dy))
    padded = F.pad(x, (p, p, p, p), mode="replicate")
    h, w = x.shape[-2:]
    return padded[..., p - dy : p - dy + h, p - dx : p - dx + w]


def _shift_views(x: torch.Tensor) -> list[torch.Tensor]:
    d = max(1, x.shape[-1] // 32)  # one pixel per 32 px of input
    return [_shift(x, d, 0), _shift(x, -d, 0), _shift(x, 0, d), _shift(x, 0, -d)]


def _zoom(x: torch.Tensor) -> list[torch.Tensor]:
    """The central 90% of the image, resized back to the input size."""
    h, w = x.shape[-2:]
    dh, dw = max(1, round(h * 0.05)), max(1, round(w * 0.05))
    crop = x[..., dh : h - dh, dw : w - dw]
    return [F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)]


# name -> the batches a view feeds the model (each averaged within the view first)
VIEWS: dict[str, Callable[[torch.Tensor], list[torch.Tensor]]] = {
    "identity": lambda x: [x],
    "hflip": lambda x: [x.flip(-1)],
    "vflip": lambda x: [x.flip(-2)],
    "rot90s": lambda x: [torch.rot90(x, k, (-2, -1)) for k in (1, 2, 3)],
    "transposes": lambda x: [x.transpose(-2, -1), x.transpose(-2, -1).flip(-2, -1)],
    "shift": _shift_views,
    "zoom": _zoom,
}


def mean_probs(probs: list[np.ndarray], combine: str, task: str) -> np.ndarray:
    """Average probability arrays, or their logits (`combine: logits`) and map back."""
    if combine == "probs" or len(probs) == 1:
        return np.mean(probs, 0)
    p = np.clip(np.stack(probs), EPS, 1 - EPS)
    if task == "multi_label":
        return 1 / (1 + np.exp(-np.log(p / (1 - p)).mean(0)))
    z = np.log(p).mean(0)  # log-softmax differs from the logits by a constant per row
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def predict_views(
    net: torch.nn.Module, loader, views: list[str], task: str = "single_label",
    device: torch.device | None = None, combine: str = "probs",
) -> dict[str, np.ndarray]:  # fmt: skip
    """{"plain": probabilities, view: probabilities, …}: every row in the loader's order."""
    device = device or torch.device("cpu")
    out: dict[str, list[torch.Tensor]] = {v: [] for v in ["plain", *views]}
    with torch.no_grad(), torch.autocast(device.type, enabled=device.type == "cuda"):
        for x, _ in progress(loader, len(loader), f"predict ({len(views)} views)", "batch"):
            x = x.to(device)
            out["plain"].append(probabilities(net(x).float(), task).cpu())
            for v in views:
                batches = [probabilities(net(b).float(), task).cpu().numpy() for b in VIEWS[v](x)]
                out[v].append(torch.from_numpy(mean_probs(batches, combine, task)))
    return {v: torch.cat(parts).numpy() for v, parts in out.items()}


def blend_tta(outs: dict[str, np.ndarray], beta: float, combine: str, task: str) -> np.ndarray:
    """beta * plain + (1 - beta) * the mean over every other view (plain alone without views)."""
    views = [a for v, a in outs.items() if v != "plain"]
    if not views:
        return outs["plain"]
    return beta * outs["plain"] + (1 - beta) * mean_probs(views, combine, task)


def choose_beta(outs, targets: np.ndarray, metric: str, combine: str, task: str) -> float:
    """The beta of BETAS that scores best on these (OOF) rows; ties: the lower log loss."""

    def key(beta: float) -> tuple[float, float]:
        blended = blend_tta(outs, beta, combine, task)
        return metrics.score(metric, blended, targets), -metrics.value("log_loss", blended, targets)

    return float(max(BETAS, key=key))


def predict_split(net, index: Index, split, rows, tta: Tta, info: dict, device):
    """Every view of one split's rows: the named ones and the random draws."""
    tf = build_transforms("valid", 0, None, tuple(info["mean"]), tuple(info["std"]))
    ds = split_dataset(index, split, rows, tf, info["image_size"])
    loader = torch.utils.data.DataLoader(ds, batch_size=tta.batch_size)
    outs = predict_views(net, loader, tta.views, info["task"], device, tta.combine)
    aug = info.get("augment")
    for i in range(tta.random):  # the training augmentation, softly, in the loader
        tf = build_transforms("train", tta.random_strength, aug, tuple(info["mean"]),
                              tuple(info["std"]), seed=i)  # fmt: skip
        ds = split_dataset(index, split, rows, tf, info["image_size"])
        loader = torch.utils.data.DataLoader(ds, batch_size=tta.batch_size)
        outs[f"random{i}"] = predict_views(net, loader, [], info["task"], device)["plain"]
    return outs


def tta_predictions(net, index: Index, fold: int, tta: Tta, info: dict, metric: str, device):
    """({split: {view: probs}}, beta, tta.json's report) of one model on one fold."""
    info = {**info, "augment": Augment(**info["augment"]) if info.get("augment") else None}
    _, valid_rows = fold_rows(index, read_folds(), fold)
    outs = {
        "oof": predict_split(net, index, "train", valid_rows, tta, info, device),
        "test": predict_split(net, index, "test", np.arange(len(index.test)), tta, info, device),
    }
    labels = index.train["label"].iloc[valid_rows]
    targets = encode_labels(labels, index.classes, info["task"])
    task = info["task"]
    beta = tta.beta
    if len(outs["oof"]) == 1:  # no view and no random draw: the plain prediction alone
        beta = 1.0
    elif beta == "auto":
        beta = choose_beta(outs["oof"], targets, metric, tta.combine, task)
    oof = outs["oof"]
    report = {
        "views": tta.views, "random": tta.random, "combine": tta.combine, "beta": beta,
        "beta_auto": tta.beta == "auto", "metric": metric,
        "oof_plain": metrics.value(metric, oof["plain"], targets),
        "oof_tta": metrics.value(metric, blend_tta(oof, 0.0, tta.combine, task), targets),
        "oof_blend": metrics.value(metric, blend_tta(oof, beta, tta.combine, task), targets),
    }  # fmt: skip
    return outs, float(beta), report


def write_fold(folder: Path, index: Index, fold: int, outs, beta: float, tta: Tta, info) -> None:
    """oof.csv and test.csv (blended), *_plain.csv (no TTA) and views.npz in `folder`."""
    _, valid_rows = fold_rows(index, read_folds(), fold)
    ids = {"oof": index.train["id"].iloc[valid_rows], "test": index.test["id"]}
    for split, views in outs.items():
        for suffix, probs in (
            ("", blend_tta(views, beta, tta.combine, info["task"])),
            ("_plain", views["plain"]),
        ):
            frame = pd.DataFrame(probs, columns=info["classes"])
            frame.insert(0, "id", ids[split].to_numpy())
            write_csv(folder / f"{split}{suffix}.csv", frame)
    arrays = {f"{s}/{v}": a for s, views in outs.items() for v, a in views.items()}
    np.savez_compressed(folder / "views.npz", **arrays)


def run(p: Params, name: str, fold: int, role: Role = TEACHER) -> None:
    tta, metric = p.tta, p.competition.metric
    models_dir, preds_dir = role.models, role.preds
    src = models_dir / name / f"fold{fold}"
    why = skipped(src)
    if why is not None:  # no student trained: nothing to predict, and the folder says why
        write_skips("predict", name, fold, why)
        return
    net, info = model.load(src)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = net.to(device, memory_format=torch.channels_last) if device.type == "cuda" else net
    index = read_index()
    out = preds_dir / name / f"fold{fold}"
    with atomic_dir(out) as tmp:  # every file appears together or not at all
        outs, beta, report = tta_predictions(net, index, fold, tta, info, metric, device)
        write_fold(tmp, index, fold, outs, beta, tta, info)
        for snap in sorted((src / "snapshots").glob("cycle*.safetensors")):
            net.load_state_dict(load_file(str(snap)))
            s_outs, s_beta, _ = tta_predictions(net, index, fold, tta, info, metric, device)
            (tmp / "snapshots" / snap.stem).mkdir(parents=True)
            write_fold(tmp / "snapshots" / snap.stem, index, fold, s_outs, s_beta, tta, info)
        write_json(tmp / "tta.json", report)
    print(
        f"predict: {role.name} {name} fold {fold}, {len(outs['oof']['plain'])} oof + "
        f"{len(index.test)} test rows, TTA {tta.views} + {tta.random} random, beta {beta} "
        f"(OOF {metric}: plain {report['oof_plain']:.4f}, TTA {report['oof_tta']:.4f}, "
        f"blend {report['oof_blend']:.4f}) -> {out}/"
    )


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipeline predict")
    ap.add_argument("--model", required=True)
    ap.add_argument("--fold", type=int, required=True)
    ap.add_argument("--student", action="store_true", help="fold k's student (pseudolabels)")
    a = ap.parse_args(argv)
    run(load_params(), a.model, a.fold, STUDENT if a.student else TEACHER)

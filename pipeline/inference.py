"""Model inference shared by the train stage (its plain predictions) and predict (TTA views):
every batch through the model on the device, once per view."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline import model
from pipeline.data import split_dataset
from pipeline.index import Index
from pipeline.params import Tta
from pipeline.preds import mean_probs
from pipeline.progress import progress
from pipeline.steps import probabilities
from pipeline.transforms import build_transforms


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


def load_model(folder: Path) -> tuple[torch.nn.Module, dict, torch.device]:
    """A saved fold model on the device, channels_last as the train stage runs it (its plain
    predictions, behind the CV, come from that layout): predict and the exported kernel both
    load here, so a kernel's probabilities are predict's."""
    net, info = model.load(folder)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return net.to(device, memory_format=torch.channels_last), info, device


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


def predict_split(net, index: Index, split, rows, tta: Tta, info: dict, device):
    """Every view of one split's rows: the named ones and the random draws. The views start from
    the eval input the train stage validated on: the central crop_pct of each image (model.json;
    1, the whole image, for a model saved before it was recorded), resized to image_size."""
    mean, std = tuple(info["mean"]), tuple(info["std"])
    tf = build_transforms("valid", 0, None, mean, std, crop_pct=info.get("crop_pct", 1.0))
    ds = split_dataset(index, split, rows, tf, info["image_size"])
    loader = torch.utils.data.DataLoader(ds, batch_size=tta.batch_size)
    outs = predict_views(net, loader, tta.views, info["task"], device, tta.combine)
    aug = info.get("augment")
    for i in range(tta.random):  # the training augmentation, softly, in the loader
        tf = build_transforms("train", tta.random_strength, aug, mean, std, seed=i)
        ds = split_dataset(index, split, rows, tf, info["image_size"])
        loader = torch.utils.data.DataLoader(ds, batch_size=tta.batch_size)
        outs[f"random{i}"] = predict_views(net, loader, [], info["task"], device)["plain"]
    return outs

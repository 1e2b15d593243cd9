"""predict: out-of-fold and test probabilities of one trained model, averaged over TTA views.

    python -m pipeline predict --model resnet10t --fold 0             # reads tta.* from params
    python -m pipeline predict --model resnet10t --fold 0 --student   # fold 0's student

Writes preds/<model>/fold<k>/oof.csv (the fold's validation rows) and test.csv (students:
students/preds/...): an id column and one probability column per class. Only `tta` is read
from params, so changing it reruns predict and what follows, never training.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from pipeline import model
from pipeline.data import build_transforms, split_dataset
from pipeline.files import atomic_dir, write_csv
from pipeline.index import fold_rows, read_folds, read_index
from pipeline.loop import probabilities
from pipeline.params import Tta, load_params
from pipeline.roles import STUDENT, TEACHER, Role, skipped, write_skips


def _shift(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Translate a batch by whole pixels, padding with the edge (no wrap-around)."""
    p = max(abs(dx), abs(dy))
    padded = F.pad(x, (p, p, p, p), mode="replicate")
    h, w = x.shape[-2:]
    return padded[..., p - dy : p - dy + h, p - dx : p - dx + w]


def _shift_views(x: torch.Tensor) -> list[torch.Tensor]:
    d = max(1, x.shape[-1] // 32)  # one pixel per 32 px of input
    return [_shift(x, d, 0), _shift(x, -d, 0), _shift(x, 0, d), _shift(x, 0, -d)]


# name -> the batches a view feeds the model; their softmax outputs are averaged
VIEWS: dict[str, Callable[[torch.Tensor], list[torch.Tensor]]] = {
    "basic": lambda x: [x],
    "hflip": lambda x: [x.flip(-1)],
    "vflip": lambda x: [x.flip(-2)],
    "shift": _shift_views,
}


def predict_tta(
    net: torch.nn.Module,
    loader,
    views: list[str],
    task: str = "single_label",
    device: torch.device | None = None,
) -> np.ndarray:
    """Probabilities (softmax, or sigmoid for multi-label) averaged over the named views, each
    view weighing the same however many batches it feeds the model (shift feeds four)."""
    device = device or torch.device("cpu")
    out = []
    with torch.no_grad(), torch.autocast(device.type, enabled=device.type == "cuda"):
        for x, _ in loader:
            x = x.to(device)
            per_view = [
                torch.stack([probabilities(net(b).float(), task) for b in VIEWS[v](x)]).mean(0)
                for v in views
            ]
            out.append(torch.stack(per_view).mean(0).cpu())
    return torch.cat(out).numpy()


def run(tta: Tta, name: str, fold: int, role: Role = TEACHER) -> None:
    models_dir, preds_dir = role.models, role.preds
    why = skipped(models_dir / name / f"fold{fold}")
    if why is not None:  # no student trained: nothing to predict, and the folder says why
        write_skips("predict", name, fold, why)
        return
    net, info = model.load(models_dir / name / f"fold{fold}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = net.to(device, memory_format=torch.channels_last) if device.type == "cuda" else net
    index = read_index()
    _, valid_rows = fold_rows(index, read_folds(), fold)
    tf = build_transforms("valid", 0, None, tuple(info["mean"]), tuple(info["std"]))
    out = preds_dir / name / f"fold{fold}"
    with atomic_dir(out) as tmp:  # oof.csv and test.csv appear together or not at all
        for split, rows, ids in (
            ("train", valid_rows, index.train["id"].iloc[valid_rows]),
            ("test", np.arange(len(index.test)), index.test["id"]),
        ):
            ds = split_dataset(index, split, rows, tf, info["image_size"])
            loader = torch.utils.data.DataLoader(ds, batch_size=tta.batch_size)
            probs = predict_tta(net, loader, tta.views, info["task"], device)
            frame = pd.DataFrame(probs, columns=info["classes"])
            frame.insert(0, "id", ids.to_numpy())
            write_csv(tmp / ("oof.csv" if split == "train" else "test.csv"), frame)
    print(
        f"predict: {role.name} {name} fold {fold}, {len(valid_rows)} oof + {len(index.test)} "
        f"test rows, TTA views {tta.views} -> {out}/"
    )


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipeline predict")
    ap.add_argument("--model", required=True)
    ap.add_argument("--fold", type=int, required=True)
    ap.add_argument("--student", action="store_true", help="fold k's student (pseudolabels)")
    a = ap.parse_args(argv)
    run(load_params().tta, a.model, a.fold, STUDENT if a.student else TEACHER)

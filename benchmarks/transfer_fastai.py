"""Row (vii) of benchmarks/transfer.py: fastai 2.8's `fine_tune` on the same folds, weights,
image size and epochs. It runs in its own environment (transfer.py makes it: fastai is never a
dependency of the project), one fold after the other, and writes the OOF probabilities.

    FASTAI_PYTHON benchmarks/transfer_fastai.py --images DIR --folds folds.csv --weights W \
        --size 96 --epochs 5 --batch-size 32 --out oof.csv

The model is what fastai's `vision_learner` builds for a timm name: timm's efficientnet_lite0
body, here holding the converted ImageNet weights, and fastai's own new head (concat pooling,
BatchNorm, dropout, two linear layers, kaiming init) in two parameter groups, body and head.
`fine_tune` trains the head for one epoch (BatchNorm of the body too, fastai's default), then
everything with differential learning rates (body base_lr / 100) under one cycle, Adam, fastai's
defaults; augmentation: fastai's aug_transforms with vertical flips, as the pipeline rows'
`flips: all`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import fastai.callback.schedule  # noqa: F401  (adds Learner.fine_tune, fit_one_cycle)
import pandas as pd
import torch
from fastai.data.block import CategoryBlock, DataBlock
from fastai.data.transforms import ColReader, IndexSplitter, Normalize
from fastai.learner import Learner
from fastai.vision.augment import Resize, aug_transforms
from fastai.vision.core import imagenet_stats
from fastai.vision.data import ImageBlock
from fastai.vision.learner import vision_learner
from safetensors.torch import load_file

MODEL = "efficientnet_lite0"


def learner(dls, weights: Path) -> Learner:
    """fastai's learner for the timm name, its body given every tensor of the file but the
    1000-class classifier (pretrained=False: fastai would download them)."""
    learn = vision_learner(dls, MODEL, pretrained=False, normalize=False)
    body = learn.model[0].model  # TimmBody's timm model, built with num_classes=0
    state = {k: v for k, v in load_file(str(weights)).items() if not k.startswith("classifier.")}
    body.load_state_dict(state)  # strict: every tensor of the body, by name
    return learn


def fold_probs(frame: pd.DataFrame, fold: int, classes: list[str], a) -> pd.DataFrame:
    """Train on every other fold with fine_tune, return this fold's probabilities."""
    valid = list(map(int, (frame["fold"] == fold).to_numpy().nonzero()[0]))
    block = DataBlock(
        blocks=(ImageBlock, CategoryBlock(vocab=classes)),
        get_x=ColReader("path"),
        get_y=ColReader("label"),
        splitter=IndexSplitter(valid),
        item_tfms=Resize(a.size),
        batch_tfms=[*aug_transforms(flip_vert=True), Normalize.from_stats(*imagenet_stats)],
    )
    dls = block.dataloaders(frame, bs=a.batch_size, num_workers=0, device=a.device)
    learn = learner(dls, a.weights)
    learn.fine_tune(a.epochs, freeze_epochs=1)
    probs, _ = learn.get_preds(dl=dls.valid)
    out = pd.DataFrame(probs.numpy(), columns=classes)
    return out.assign(id=frame["id"].iloc[valid].to_numpy(), fold=fold)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, required=True, help="folder of <id>.png")
    ap.add_argument("--folds", type=Path, required=True, help="the pipeline's folds/folds.csv")
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--epochs", type=int, required=True)
    ap.add_argument("--batch-size", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    a.device = "cuda" if torch.cuda.is_available() else "cpu"
    frame = pd.read_csv(a.folds, dtype={"id": str, "label": str})
    frame["path"] = [a.images / f"{i}.png" for i in frame["id"]]
    classes = sorted(frame["label"].unique())
    parts = [fold_probs(frame, k, classes, a) for k in sorted(frame["fold"].unique())]
    pd.concat(parts)[["id", "fold", *classes]].to_csv(a.out, index=False)


if __name__ == "__main__":
    main()

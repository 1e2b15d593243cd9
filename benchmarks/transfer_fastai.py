"""Row (vii) of benchmarks/transfer.py: fastai 2.8's `fine_tune` on the same folds, weights,
image size and epochs. It runs in its own environment (transfer.py makes it: fastai is never a
dependency of the project), one fold after the other, and writes the OOF probabilities.

    FASTAI_PYTHON benchmarks/transfer_fastai.py --images DIR --folds folds.csv --weights W \
        --size 96 --epochs 5 --batch-size 32 --out oof.csv

The model is timm's efficientnet_lite0 holding the converted ImageNet weights (classifier new),
given to fastai's Learner with two parameter groups, body and classifier: `fine_tune` trains the
classifier for one epoch (BatchNorm of the body too, fastai's default), then everything with
differential learning rates (body base_lr / 100) under one cycle, Adam, fastai's defaults;
augmentation: fastai's aug_transforms with vertical flips, as the pipeline rows' `flips: all`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import fastai.callback.schedule  # noqa: F401  (adds Learner.fine_tune, fit_one_cycle)
import pandas as pd
import timm
import torch
from fastai.data.block import CategoryBlock, DataBlock
from fastai.data.transforms import ColReader, IndexSplitter, Normalize
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.torch_core import params
from fastai.vision.augment import Resize, aug_transforms
from fastai.vision.core import imagenet_stats
from fastai.vision.data import ImageBlock
from safetensors.torch import load_file

MODEL = "efficientnet_lite0"


def pretrained(n_classes: int, weights: Path) -> torch.nn.Module:
    """timm's model with every tensor of the file but the 1000-class classifier."""
    net = timm.create_model(MODEL, num_classes=n_classes)
    state = {k: v for k, v in load_file(str(weights)).items() if not k.startswith("classifier.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("classifier.") for k in missing), missing
    return net


def body_and_head(net: torch.nn.Module) -> list[list[torch.nn.Parameter]]:
    body = [p for n, p in net.named_parameters() if not n.startswith("classifier.")]
    return [body, params(net.classifier)]


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
    net = pretrained(len(classes), a.weights)
    learn = Learner(dls, net, loss_func=CrossEntropyLossFlat(), splitter=body_and_head)
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

"""diagnose: where one fold model looks (Grad-CAM) and which images the submission gets most wrong.

    python -m pipeline diagnose     # reads diagnose.* (and which models trained) from params

Writes diagnose/ (also on the `dvc plots show` page):
- gradcam.png: for up to `max_classes` classes (the most frequent), `per_class` validation
  images of fold `diagnose.fold`, each beside its Grad-CAM heatmap for its true class, computed by
  the `grad-cam` package on the timm model's last feature stage (timm's `feature_info`), or the
  last one still at least 4 x 4 at a small input size (resnet at 32 px: layer2);
- top_losses.png: the `top_losses` training images with the highest out-of-fold loss of what is
  submitted (final/oof.npy), with true label, prediction, its probability and the loss, as
  fastai's `plot_top_losses`;
- diagnose.json: the model, fold, target layer and the ids shown.
Images are the originals resized to `diagnose.size` px, not the training cache.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline import metrics
from pipeline.files import PipelineError, atomic_dir, read_json, write_json
from pipeline.index import Index, encode_labels, fold_rows, load_image, read_folds, read_index
from pipeline.params import Params, load_params
from pipeline.preds import read_preds, read_thresholds
from pipeline.roles import TEACHER, Role, last_student, skipped

if TYPE_CHECKING:  # torch, timm and albumentations load only when the stage is enabled
    import torch
    from torch import nn

OUT = Path("diagnose")
LINE, PAD = 15, 6  # px: one caption line, the gap between tiles


MIN_SIDE = 4  # the heatmap's least resolution: a 1 x 1 map says nothing about where


def target_layer(net: nn.Module, size: int) -> tuple[str, nn.Module, int]:
    """(name, module, channels) of the last feature stage (timm's `feature_info`) whose map is
    at least MIN_SIDE px on a side at this input size: the last stage itself from about 128 px
    (224 px: 7 x 7), an earlier one at the small sizes of a cached competition."""
    info = getattr(net, "feature_info", None)
    if not info:
        raise PipelineError(
            f"{type(net).__name__} has no feature_info: Grad-CAM needs a timm model's feature "
            "stages; set diagnose.enabled: false"
        )
    wide = [f for f in info if size / f.get("reduction", 1) >= MIN_SIDE] or [info[0]]
    last = wide[-1]
    return last["module"], net.get_submodule(last["module"]), int(last["num_chs"])


def to_maps(channels: int, prefix_tokens: int):
    """Grad-CAM's reshape_transform: the stage's output as (N, C, H, W), whatever its layout
    (NHWC stages, or (N, tokens, C) transformer blocks with `prefix_tokens` class tokens)."""

    def reshape(t: torch.Tensor) -> torch.Tensor:
        if t.ndim == 3:
            t = t[:, prefix_tokens:]
            side = int(round(t.shape[1] ** 0.5))
            return t.reshape(t.shape[0], side, side, t.shape[2]).permute(0, 3, 1, 2)
        if t.shape[1] != channels and t.shape[-1] == channels:
            return t.permute(0, 3, 1, 2)
        return t

    return reshape


def grad_cam(net: nn.Module, x: torch.Tensor, classes: list[int]) -> np.ndarray:
    """(N, H, W) heatmaps in [0, 1] at the input's size, one per image for its class."""
    from pytorch_grad_cam import GradCAM  # here: torch and grad-cam only when diagnose is on
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    _, layer, channels = target_layer(net, x.shape[-1])
    reshape = to_maps(channels, int(getattr(net, "num_prefix_tokens", 0)))
    with GradCAM(model=net, target_layers=[layer], reshape_transform=reshape) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes])


def font(size: int = 12) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def tile(img: np.ndarray, lines: list[str], size: int) -> Image.Image:
    """One image (resized to size x size) above its caption lines."""
    out = Image.new("RGB", (size, size + LINE * len(lines)), "white")
    out.paste(Image.fromarray(cv2.resize(img, (size, size), interpolation=cv2.INTER_CUBIC)))
    draw, f = ImageDraw.Draw(out), font()
    for i, text in enumerate(lines):
        while len(text) > 3 and draw.textlength(text, font=f) > size:
            text = text[:-2] + "…"
        draw.text((1, size + LINE * i + 1), text, fill="black", font=f)
    return out


def grid(tiles: list[Image.Image], cols: int, title: str) -> Image.Image:
    """Tiles (all one size) in rows of `cols`, under a title line."""
    w, h = tiles[0].size
    rows = -(-len(tiles) // cols)
    top = 2 * LINE
    out = Image.new("RGB", (cols * (w + PAD) + PAD, top + rows * (h + PAD) + PAD), "white")
    for i, t in enumerate(tiles):
        out.paste(t, (PAD + (i % cols) * (w + PAD), top + (i // cols) * (h + PAD)))
    ImageDraw.Draw(out).text((PAD, 6), title, fill="black", font=font(14))
    return out


def grid_size(n: int, cols: int, size: int, lines: int) -> tuple[int, int]:
    """The pixel size `grid` gives n tiles of `lines` caption lines."""
    rows = -(-n // cols)
    return cols * (size + PAD) + PAD, 2 * LINE + rows * (size + LINE * lines + PAD) + PAD


def submits_students(p: Params, final: Path = Path("final/thresholds.json")) -> bool:
    """Whether the submitted blend holds students: final/ says (`ensemble --final` submits the
    teachers when the students score worse), else pseudo.enabled."""
    if not final.exists():
        return p.pseudo.enabled
    return any(label.startswith("student") for label in read_json(final).get("weights", {}))


def chosen_model(p: Params) -> tuple[Role, str]:
    """The role and backbone to diagnose: diagnose.model, else the first of what is submitted."""
    last = last_student(p)
    students = [n for n in p.train.backbones if skipped(last.models / n / "fold0") is None]
    names = students if submits_students(p) and students else p.train.backbones
    role = last if names is students else TEACHER
    name = p.diagnose.model or names[0]
    if name not in names:
        raise PipelineError(
            f"diagnose.model '{name}' is not a trained {role.name} backbone ({', '.join(names)})"
        )
    return role, name


def sample_rows(index: Index, rows: np.ndarray, per_class: int, max_classes: int, seed: int):
    """[(class id, row)]: up to per_class validation rows of the most frequent classes."""
    task = index.meta["task"]
    y = encode_labels(index.train["label"].iloc[rows], index.classes, task)
    hot = y if task == "multi_label" else np.eye(len(index.classes))[y.astype(int)]
    order = np.argsort(-hot.sum(0), kind="stable")[:max_classes]
    rng, picked = np.random.default_rng(seed), []
    for c in sorted(order):
        have = rows[hot[:, c] > 0.5]
        picked += [(int(c), int(r)) for r in rng.permutation(have)[:per_class]]
    return picked


def network_input(index: Index, rows: list[int], info: dict) -> torch.Tensor:
    import torch  # here: torch and grad-cam only when diagnose is on

    from pipeline.data import split_dataset
    from pipeline.transforms import build_transforms

    tf = build_transforms("valid", 0, None, tuple(info["mean"]), tuple(info["std"]))
    ds = split_dataset(index, "train", np.array(rows), tf, info["image_size"])
    return torch.stack([ds[i][0] for i in range(len(ds))])


def original(index: Index, row: int) -> np.ndarray:
    return load_image(index.train["path"].iloc[row])


def cam_grid(net: nn.Module, info: dict, index: Index, picked, cols: int, size: int):
    """Grad-CAM tiles: each image beside its heatmap, one row of `cols` pairs per class."""
    import torch  # here: torch and grad-cam only when diagnose is on
    from pytorch_grad_cam.utils.image import show_cam_on_image

    from pipeline.steps import probabilities

    x = network_input(index, [r for _, r in picked], info)
    with torch.no_grad():
        probs = probabilities(net(x).float(), info["task"]).numpy()
    maps = grad_cam(net, x, [c for c, _ in picked])
    names, tiles, blank = index.classes, {}, Image.new("RGB", (size, size + LINE), "white")
    for (c, r), m, pr in zip(picked, maps, probs, strict=True):
        img = cv2.resize(original(index, r), (size, size), interpolation=cv2.INTER_CUBIC)
        heat = show_cam_on_image(img.astype(np.float32) / 255, cv2.resize(m, (size, size)),
                                 use_rgb=True, image_weight=0.55)  # fmt: skip
        said = f"p({names[c]}) {pr[c]:.2f}" if info["task"] == "multi_label" else (
            f"pred {names[int(pr.argmax())]} {pr.max():.2f}")  # fmt: skip
        id_ = index.train["id"].iloc[r]
        tiles.setdefault(c, []).extend(
            [tile(img, [f"{names[c]} · {id_}"], size), tile(heat, [said], size)]
        )
    rows = [row + [blank] * (2 * cols - len(row)) for row in tiles.values()]
    return [t for row in rows for t in row]


def top_loss_tiles(index: Index, final: Path, n: int, size: int) -> tuple[list, list[str]]:
    """Tiles of the n OOF rows of what is submitted with the highest loss, and their ids."""
    classes, task = index.classes, index.meta["task"]
    oof = read_preds(final, "oof", classes).reindex(index.train["id"])
    if oof.isna().any().any():
        raise PipelineError(f"{final / 'oof.npy'}: does not cover every training id")
    probs = oof.to_numpy()
    targets = encode_labels(index.train["label"], classes, task)
    losses = metrics.row_log_loss(probs, targets)
    cut = read_thresholds(final / "thresholds.json", classes)
    tiles, ids = [], []
    for r in np.argsort(-losses, kind="stable")[:n]:
        pr, true = probs[r], index.train["label"].iloc[r]
        if task == "multi_label":
            said = " ".join(
                c for i, c in enumerate(classes) if pr[i] >= (0.5 if cut is None else cut[i])
            )
            lines = [f"true {true}", f"pred {said or '(none)'}", f"loss {losses[r]:.2f}"]
        else:
            k, id_ = int(pr.argmax()), index.train["id"].iloc[r]
            lines = [f"true {true} · pred {classes[k]}", f"p {pr[k]:.2f} · loss {losses[r]:.2f}"]
            lines.append(f"id {id_}")
        img = cv2.resize(original(index, int(r)), (size, size), interpolation=cv2.INTER_CUBIC)
        tiles.append(tile(img, lines, size))
        ids.append(str(index.train["id"].iloc[r]))
    return tiles, ids


def run(p: Params, out: Path = OUT, final: Path = Path("final")) -> dict:
    d = p.diagnose
    if not d.enabled:
        with atomic_dir(out) as tmp:
            write_json(tmp / "diagnose.json", {"skipped": "diagnose.enabled is false"})
        print("diagnose: skipped (diagnose.enabled is false)")
        return {}
    from pipeline import model  # here: torch and grad-cam only when diagnose is on

    role, name = chosen_model(p)
    net, info = model.load(role.models / name / f"fold{d.fold}")
    index = read_index()
    _, valid = fold_rows(index, read_folds(), d.fold)
    picked = sample_rows(index, valid, d.per_class, d.max_classes, p.base.seed)
    layer = target_layer(net, info["image_size"])[0]
    what = f"{role.name} {name} fold {d.fold}"
    report = {"model": what, "target_layer": layer, "gradcam_ids": [], "top_loss_ids": []}
    with atomic_dir(out) as tmp:
        cams = cam_grid(net, info, index, picked, d.per_class, d.size)
        title = f"Grad-CAM of {what} ({layer}) on its validation images, for the true class"
        grid(cams, 2 * d.per_class, title).save(tmp / "gradcam.png")
        report["gradcam_ids"] = [str(index.train["id"].iloc[r]) for _, r in picked]
        if d.top_losses:
            tiles, report["top_loss_ids"] = top_loss_tiles(index, final, d.top_losses, d.size)
            title = "Top losses: the out-of-fold images what is submitted gets most wrong"
            grid(tiles, min(8, len(tiles)), title).save(tmp / "top_losses.png")
        write_json(tmp / "diagnose.json", report)
    print(f"diagnose: {what}, Grad-CAM on {layer}, {len(picked)} images + "
          f"{len(report['top_loss_ids'])} top losses -> {out}/")  # fmt: skip
    return report


def main(argv: list[str]) -> None:
    argparse.ArgumentParser(prog="python -m pipeline diagnose").parse_args(argv)
    run(load_params())

"""The training augmentation (albumentations) at an epoch's strength, and the resize, crop and
normalisation every image passes: what a model sees in training, validation and TTA."""

from __future__ import annotations

import math

import albumentations as A
import cv2
import numpy as np
import torch

from pipeline import schedules
from pipeline.index import resize
from pipeline.params import Augment

Box = tuple[float, float, float, float]  # top, left, height, width: fractions of the sides


def centre_box(pct: float) -> Box:
    """The central `pct` of each side (base.crop_pct): validation's and prediction's view."""
    return ((1 - pct) / 2, (1 - pct) / 2, pct, pct)


def cut(img: np.ndarray, box: Box) -> np.ndarray:
    """The box's pixels (at least one each way). Fractions, not pixels: a squished file that is
    not square is cut as its squished square would be."""
    h, w = img.shape[:2]
    ch, cw = max(1, round(box[2] * h)), max(1, round(box[3] * w))
    top, left = min(round(box[0] * h), h - ch), min(round(box[1] * w), w - cw)
    return img[top : top + ch, left : left + cw]


class ResizedCrop:
    """A random-resized crop (Inception's scale and aspect jitter): torchvision's
    RandomResizedCrop.get_params, the box timm's and albumentations' draw too, on the unit square
    — up to ten tries for an area share in `scale` and a log-uniform aspect ratio (width /
    height) in `ratio` that fits, else the largest centred box whose ratio is in range.

    Not A.RandomResizedCrop: that one fixes the output size when built, and the size changes with
    progressive resizing and between the splits; here the box is drawn first and resized by
    index.resize (area averaging when shrinking), as the cache was. Its own generator, seeded with
    the Compose's seed: the flips' and the other transforms' draws stay what they were without it.
    """

    def __init__(self, scale: tuple[float, float], ratio: tuple[float, float], seed=None):
        self.scale, self.log_ratio = scale, (math.log(ratio[0]), math.log(ratio[1]))
        self.set_random_seed(seed)

    def set_random_seed(self, seed: int | None) -> None:
        self.rng = np.random.default_rng(None if seed is None else [seed, 0x6372])

    def box(self) -> Box:
        for _ in range(10):
            area = self.rng.uniform(*self.scale)
            ratio = math.exp(self.rng.uniform(*self.log_ratio))
            w, h = math.sqrt(area * ratio), math.sqrt(area / ratio)
            if w <= 1 and h <= 1:
                return (self.rng.uniform(0, 1 - h), self.rng.uniform(0, 1 - w), h, w)
        low, high = math.exp(self.log_ratio[0]), math.exp(self.log_ratio[1])
        w, h = (1.0, 1 / low) if low > 1 else (high, 1.0) if high < 1 else (1.0, 1.0)
        return ((1 - h) / 2, (1 - w) / 2, h, w)


class Transform:
    """The network's input from a source image (a cache row, or a decoded file made square): a
    crop — random-resized (training), or the central `crop` share of the side (base.crop_pct) —
    resized to the input size; then albumentations' random transforms (if any) and normalisation
    into a CHW float32 tensor.

    The tail is A.Normalize + ToTensorV2's arithmetic, (x - 255 mean) / (255 std), done in numpy:
    the two transforms cost 60-90 µs an image in per-call overhead, which at 32 px is a quarter
    of the loader's time; this costs a few. Called like a Compose: `tf(image=img)["image"]`, with
    `size=` to crop and resize first.
    """

    def __init__(self, compose: A.Compose | None, mean, std, crop: ResizedCrop | float = 1.0):
        self.compose, self.crop = compose, crop
        self.shift = (np.asarray(mean, np.float32) * np.float32(255.0))[:, None, None]
        self.scale = np.reciprocal(np.asarray(std, np.float32) * np.float32(255.0))[:, None, None]

    def set_random_seed(self, seed: int) -> None:
        if self.compose is not None:
            self.compose.set_random_seed(seed)
        if isinstance(self.crop, ResizedCrop):
            self.crop.set_random_seed(seed)

    def fit(self, image: np.ndarray, size: int) -> np.ndarray:
        """size x size px of the image: its crop, resized (the whole image when crop is 1)."""
        crop = self.crop
        if crop == 1.0:
            return resize(image, size)
        return resize(
            cut(image, crop.box() if isinstance(crop, ResizedCrop) else centre_box(crop)), size
        )

    def __call__(self, *, image: np.ndarray, size: int | None = None) -> dict[str, torch.Tensor]:
        if size is not None:
            image = self.fit(image, size)
        if self.compose is not None:
            image = self.compose(image=image)["image"]
        x = image.transpose(2, 0, 1).astype(np.float32, order="C")  # CHW: long inner loops
        x -= self.shift
        x *= self.scale
        return {"image": torch.from_numpy(x)}


def build_transforms(
    split: str,
    strength: float,
    aug: Augment | None,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    seed: int | None = None,
    crop_pct: float = 1.0,
) -> Transform:
    """One pipeline for every split; `strength` s scales every random transform (0 = none).

    `split` is "train" (random augmentation, random-resized crops of the whole image) or anything
    else (the central crop_pct of the image, normalised). `seed` makes the random draws
    repeatable (albumentations keeps its own generator, apart from torch's).
    """
    if split != "train":
        return Transform(None, mean, std, crop_pct)
    if strength <= 0 or aug is None:
        return Transform(None, mean, std)
    ops = flips(aug.flips) + augmentations(aug, strength)
    return Transform(A.Compose(ops, seed=seed), mean, std, crop_jitter(aug, strength, seed))


def crop_jitter(aug: Augment, s: float, seed: int | None) -> ResizedCrop | float:
    """augment.crop_scale and crop_ratio narrowed towards 1 by the strength s: the area share
    range [1 - s (1 - lo), 1 - s (1 - hi)], the aspect ratio range [lo ** s, hi ** s] (both
    [1, 1] at s = 0); 1.0 (the whole image) when both are [1, 1]."""
    (a, b), (r0, r1) = aug.crop_scale, aug.crop_ratio
    if (a, b, r0, r1) == (1, 1, 1, 1):
        return 1.0
    return ResizedCrop((1 - s * (1 - a), 1 - s * (1 - b)), (r0**s, r1**s), seed)


def flips(domain: str) -> list[A.BasicTransform]:
    """The symmetries of the domain: none, left-right, or all eight of the square (D4)."""
    if domain == "horizontal":
        return [A.HorizontalFlip(p=0.5)]
    if domain == "all":
        return [A.SquareSymmetry(p=1.0)]  # identity, flips, transposes and 90° rotations
    return []


class RotateShiftScale(A.ImageOnlyTransform):
    """A random rotation (degrees), shift (fraction of the side) and zoom about the centre, one
    cv2.warpAffine with a black border: what A.Affine does for these three, at a sixth of its
    cost (57 against 311 µs an image at 32 px here; A.Affine's general matrix code, built for
    shear, boxes and keypoints too, dominated the loader). Draws come from the Compose's seeded
    generator, as albumentations' own transforms' do."""

    def __init__(self, rotate: float, shift: float, scale: float, p: float = 0.5) -> None:
        super().__init__(p=p)
        self.rotate, self.shift, self.scale = rotate, shift, scale

    def get_params(self) -> dict[str, float]:
        u = self.py_random.uniform
        return {
            "angle": u(-self.rotate, self.rotate), "zoom": u(1 - self.scale, 1 + self.scale),
            "dx": u(-self.shift, self.shift), "dy": u(-self.shift, self.shift),
        }  # fmt: skip

    def apply(self, img: np.ndarray, angle: float, zoom: float, dx: float, dy: float, **_):
        h, w = img.shape[:2]
        m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, zoom)
        m[:, 2] += (dx * w, dy * h)
        out = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)  # fmt: skip
        return out.reshape(img.shape)  # cv2 drops a single channel's axis

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("rotate", "shift", "scale")


def augmentations(aug: Augment, s: float) -> list[A.BasicTransform]:
    """Every magnitude of `augment` times the strength s (each one's maximum is at s = 1)."""
    ops: list[A.BasicTransform] = []
    if aug.rotate or aug.shift or aug.scale:
        ops.append(
            RotateShiftScale(
                aug.rotate * s, aug.shift * s, aug.scale * s, p=min(1.0, 0.5 + 0.5 * s)
            )
        )
    if aug.brightness:
        b = aug.brightness * s
        ops.append(A.RandomBrightnessContrast(brightness_limit=b, contrast_limit=b, p=0.5))
    if aug.hue or aug.saturation:
        sat = aug.saturation * s
        ops.append(
            A.ColorJitter(
                brightness=0,
                contrast=0,
                saturation=(1 - sat, 1 + sat),
                hue=(-aug.hue * s, aug.hue * s),
                p=0.5,
            )  # fmt: skip
        )
    noisy = []
    if aug.blur:
        noisy.append(A.GaussianBlur(blur_limit=0, sigma_limit=(0.1, max(0.1, aug.blur * s)), p=1))
    if aug.noise:
        noisy.append(A.GaussNoise(std_range=(0.0, aug.noise * s), p=1))
    if noisy:
        ops.append(A.OneOf(noisy, p=0.5))
    if aug.cutout:
        side = aug.cutout * s
        ops.append(
            A.CoarseDropout(
                num_holes_range=(1, 1),
                hole_height_range=(side, side),
                hole_width_range=(side, side),
                fill=0,
                p=0.5,
            )  # fmt: skip
        )
    return ops


def epoch_strength(aug: Augment, epoch: int, total: int) -> float:
    """The scheduled strength of one epoch (0-based) of a run of `total` epochs."""
    return schedules.augment_strength(
        epoch, total, aug.ramp, aug.strength_start, aug.strength_end, aug.clean_epochs,
        aug.clean_strength,
    )  # fmt: skip

"""A pseudolabel's confidence and target from probabilities, one formula for both users: the
pseudolabel stage (the teachers' blend of the test set, once) and a student under
`pseudo.weighting: online` (its own prediction on a weak view of each unlabeled image, every step).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import numpy as np

from pipeline.metrics import EPS


def namespace(p):
    """numpy for an array, torch for a tensor: the pseudolabel stage never imports torch."""
    return np if isinstance(p, np.ndarray) else importlib.import_module("torch")


def confidence(p, task: str):
    """Top probability; multi-label: the least certain tag's max(p, 1 - p)."""
    xp = namespace(p)
    if task == "multi_label":
        return xp.amin(xp.maximum(p, 1 - p), 1)
    return xp.amax(p, 1)


def sharpened(p, task: str, temperature: float):
    """p ** (1/T) renormalised per image (multi-label: per tag, against 1 - p)."""
    xp = namespace(p)
    s = xp.clip(p, EPS, 1 - EPS) ** (1 / temperature)
    if task == "multi_label":
        return s / (s + xp.clip(1 - p, EPS, 1) ** (1 / temperature))
    return s / s.sum(1, keepdims=True)


@dataclass(frozen=True)
class OnlineTargets:
    """FixMatch's targets (Sohn et al. 2020): from a student's logits on the weak views of its
    unlabeled images, each image's target (its probabilities sharpened by `temperature`, or with
    `soft` false its top class, multi-label its tags over 0.5) and whether it counts: its
    confidence reaches `threshold`."""

    task: str
    threshold: float
    soft: bool
    temperature: float

    def __call__(self, logits):  # a tensor: (targets, counted), tensors
        torch, multi = namespace(logits), self.task == "multi_label"
        p = logits.float().sigmoid() if multi else logits.float().softmax(1)
        if self.soft:
            t = sharpened(p, self.task, self.temperature)
        elif multi:
            t = (p > 0.5).float()
        else:
            t = torch.nn.functional.one_hot(p.argmax(1), p.shape[1]).float()
        return t, confidence(p, self.task) >= self.threshold

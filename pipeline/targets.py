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
    """p ** (1/T) renormalised per image (multi-label: per tag, against 1 - p), in log space: a
    small T cannot underflow every class to 0 (0 / 0) in float32."""
    xp = namespace(p)
    if task == "multi_label":  # p^a / (p^a + (1-p)^a) = sigmoid(a * logit(p))
        z = (xp.log(xp.clip(p, EPS, 1)) - xp.log(xp.clip(1 - p, EPS, 1))) / temperature
        return 1 / (1 + xp.exp(-z))
    z = xp.log(xp.clip(p, EPS, 1)) / temperature
    s = xp.exp(z - xp.amax(z, 1, keepdims=True))
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
        torch, multi, z = namespace(logits), self.task == "multi_label", logits.float()
        p = z.sigmoid() if multi else z.softmax(1)
        if self.soft:  # `sharpened` from the logits themselves: softmax(z / T), sigmoid(z / T)
            t = (z / self.temperature).sigmoid() if multi else (z / self.temperature).softmax(1)
        elif multi:
            t = (p > 0.5).float()
        else:
            t = torch.nn.functional.one_hot(p.argmax(1), p.shape[1]).float()
        return t, confidence(p, self.task) >= self.threshold

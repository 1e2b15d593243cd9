"""Learning-rate, momentum and augmentation-strength schedules as pure functions of the step.

Nothing here imports the project or torch: each function maps (step, total, knobs) to a number,
so the tests check them with arithmetic alone.
"""

from __future__ import annotations

import math


def _cos(start: float, end: float, pct: float) -> float:
    """Cosine interpolation from start (pct=0) to end (pct=1)."""
    return end + (start - end) / 2 * (1 + math.cos(math.pi * pct))


def one_cycle_lr(
    step: int, total: int, max_lr: float, pct_start: float, div: float, final_div: float
) -> float:
    """fastai's 1cycle: cosine from max_lr/div up to max_lr, then down to max_lr/final_div."""
    warm = max(1, round(total * pct_start))
    if step < warm:
        return _cos(max_lr / div, max_lr, step / warm)
    rest = max(1, total - warm)
    return _cos(max_lr, max_lr / final_div, min(1.0, (step - warm) / rest))


def one_cycle_momentum(
    step: int, total: int, pct_start: float, mom_max: float = 0.95, mom_min: float = 0.85
) -> float:
    """Momentum moves opposite to the LR: mom_max -> mom_min during warm-up, then back."""
    warm = max(1, round(total * pct_start))
    if step < warm:
        return _cos(mom_max, mom_min, step / warm)
    rest = max(1, total - warm)
    return _cos(mom_min, mom_max, min(1.0, (step - warm) / rest))


def linear(step: int, total: int, start: float, end: float) -> float:
    """Straight line from start (step 0) to end (step total-1); used for augmentation strength."""
    if total <= 1:
        return end
    return start + (end - start) * min(1.0, step / (total - 1))

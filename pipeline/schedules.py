"""Learning-rate, momentum and augmentation-strength schedules as pure functions of the step.

Nothing here imports the project or torch: each function maps (step, total, knobs) to a number,
so the tests check them with arithmetic alone.
"""

from __future__ import annotations

import math

# Adam's beta1 under 1cycle: high where the LR is low, low at its peak (fastai's values)
MOM_MAX, MOM_MIN = 0.95, 0.85


def _cos(start: float, end: float, pct: float) -> float:
    """Cosine interpolation from start (pct=0) to end (pct=1)."""
    return end + (start - end) / 2 * (1 + math.cos(math.pi * pct))


def one_cycle_lr(
    step: int, total: int, max_lr: float, pct_start: float, div: float, final_div: float
) -> float:
    """fastai's 1cycle: cosine from max_lr/div up to max_lr, then down to max_lr/final_div,
    which the last step (total - 1) reaches exactly."""
    warm = max(1, round(total * pct_start))
    if step < warm:
        return _cos(max_lr / div, max_lr, step / warm)
    rest = max(1, total - 1 - warm)
    return _cos(max_lr, max_lr / final_div, min(1.0, (step - warm) / rest))


def one_cycle_momentum(
    step: int, total: int, pct_start: float, mom_max: float = MOM_MAX, mom_min: float = MOM_MIN
) -> float:
    """Momentum moves opposite to the LR: mom_max -> mom_min during warm-up, then back."""
    warm = max(1, round(total * pct_start))
    if step < warm:
        return _cos(mom_max, mom_min, step / warm)
    rest = max(1, total - 1 - warm)
    return _cos(mom_min, mom_max, min(1.0, (step - warm) / rest))


def linear(step: int, total: int, start: float, end: float) -> float:
    """Straight line from start (step 0) to end (step total-1); used for augmentation strength."""
    if total <= 1:
        return end
    return start + (end - start) * min(1.0, step / (total - 1))


def augment_strength(
    epoch: int, total: int, ramp: str, start: float, end: float, clean: int, clean_value: float
) -> float:
    """Strength of epoch `epoch` (0-based) of `total`: a linear or cosine ramp from start to end
    over the first total - clean epochs, then `clean_value` for the last `clean` epochs."""
    ramped = total - clean
    if epoch >= ramped:
        return clean_value
    if ramp == "cosine":
        return start if ramped <= 1 else _cos(start, end, epoch / (ramped - 1))
    return linear(epoch, ramped, start, end)


def sgdr_lr(
    step: int, steps_per_epoch: int, max_lr: float, min_lr: float, cycle_len: int, cycle_mult: int
) -> float:
    """SGDR (cosine annealing with warm restarts): cycles of cycle_len * cycle_mult**i epochs."""
    start, length = 0, cycle_len * steps_per_epoch
    while step >= start + length:
        start, length = start + length, length * cycle_mult
    return _cos(max_lr, min_lr, (step - start) / length)


def sgdr_cycle_ends(epochs: int, cycle_len: int, cycle_mult: int) -> list[int]:
    """1-based epochs at which an SGDR cycle finishes (where a snapshot is saved)."""
    ends, end, length = [], 0, cycle_len
    while end + length <= epochs:
        end += length
        ends.append(end)
        length *= cycle_mult
    return ends


def geometric_lrs(lr: float, lr_mult: float, n: int) -> list[float]:
    """Peak LR per layer group: lr / lr_mult for the first group up to lr for the head."""
    if n == 1:
        return [lr]
    return [lr / lr_mult ** (1 - i / (n - 1)) for i in range(n)]


def lr_sweep(step: int, steps: int, start: float, end: float) -> float:
    """The LR range test's exponential sweep from start (step 0) to end (step steps-1)."""
    return start * (end / start) ** (step / max(1, steps - 1))


def smooth(losses: list[float], beta: float = 0.98) -> list[float]:
    """Exponential moving average with Adam-style bias correction (no drag towards 0 early)."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses, start=1):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta**i))
    return out


def suggest_lr(lrs: list[float], losses: list[float], method: str) -> float:
    """A learning rate from an LR range test curve (smoothed losses).

    valley: fastai's — the middle of the longest stretch where the loss keeps falling;
    minimum: the LR of the lowest loss divided by 10; steepest: where the loss falls fastest
    per unit of log LR.
    """
    n = len(losses)
    if n < 3:
        raise ValueError(f"an LR range test needs >= 3 points, got {n}")
    if method == "minimum":
        return lrs[min(range(n), key=losses.__getitem__)] / 10
    if method == "steepest":
        logs = [math.log(x) for x in lrs]
        slopes = [
            (losses[i + 1] - losses[i - 1]) / (logs[i + 1] - logs[i - 1]) for i in range(1, n - 1)
        ]
        return lrs[1 + min(range(len(slopes)), key=slopes.__getitem__)]
    if method != "valley":
        raise ValueError(f"unknown LR suggestion '{method}'")
    # longest decreasing subsequence ending at each point (O(n^2), n ~ 100)
    run = [1] * n
    best_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
        if run[i] > run[best_end]:
            best_end = i
    best_start = best_end - run[best_end] + 1
    third = (best_end - best_start) / 3
    return lrs[best_start + int(third) + int(third / 2)]


def rampup(epoch: int, epochs: int, value: float) -> float:
    """Linear from 0 at epoch 0 to `value` at epoch `epochs` (0: `value` from the start)."""
    if epochs <= 0:
        return value
    return value * min(1.0, epoch / epochs)

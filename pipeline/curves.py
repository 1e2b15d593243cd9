"""Reading a learning curve: one verdict per training run from its per-epoch losses.

No torch, no project imports: the rules are arithmetic on two lists, so tests check them on
hand-made curves. With v the validation loss per epoch and best the epoch of its lowest value:

- over-fitting with oscillations: v ends more than 10% above its minimum and, after the best
  epoch, changes direction at least twice;
- over-fitting: v ends more than 10% above its minimum and rose steadily after the best epoch
  (fewer than two turns): the model memorises the training rows;
- still improving (under-fitting): v fell by more than 5% over the last quarter of the epochs
  and the best epoch is one of the last two: more epochs (or a higher LR) would help;
- good fit: otherwise (v ends within 10% of its minimum and has flattened out).

A rise or fall also has to exceed 2% of the ground the curve covered (first value minus minimum):
a valid loss that went from 2.3 to 0.010 and ends at 0.012 is at noise level, not over-fitting.
"""

from __future__ import annotations

UNDER, OVER, OSCILLATING, GOOD = (
    "still improving (under-fitting)",
    "over-fitting",
    "over-fitting with oscillations",
    "good fit",
)
RISE, DROP, FLOOR = 0.10, 0.05, 0.02


def turns(values: list[float]) -> int:
    """How often the curve changes direction (flat steps ignored)."""
    steps = [b - a for a, b in zip(values, values[1:], strict=False) if b != a]
    return sum(1 for a, b in zip(steps, steps[1:], strict=False) if (a > 0) != (b > 0))


def verdict(valid_loss: list[float]) -> str:
    """One of UNDER, OVER, OSCILLATING, GOOD for a run's per-epoch validation loss."""
    v = valid_loss
    if len(v) < 3:
        return UNDER  # too short to have levelled off
    best = min(range(len(v)), key=v.__getitem__)
    noise = FLOOR * (v[0] - v[best])
    if v[-1] - v[best] > max(v[best] * RISE, noise):
        return OSCILLATING if turns(v[best:]) >= 2 else OVER
    quarter = max(1, len(v) // 4)
    fell = v[-1 - quarter] - v[-1]
    if fell > max(v[-1 - quarter] * DROP, noise) and best >= len(v) - 2:
        return UNDER
    return GOOD

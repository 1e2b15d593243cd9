"""Schedules are pure functions: checked with numbers, no training."""

import math

import pytest

from pipeline.schedules import linear, one_cycle_lr, one_cycle_momentum


def test_one_cycle_lr_endpoints_and_peak():
    total, max_lr, div, final_div = 100, 0.01, 25.0, 1e4
    assert one_cycle_lr(0, total, max_lr, 0.25, div, final_div) == pytest.approx(max_lr / div)
    assert one_cycle_lr(25, total, max_lr, 0.25, div, final_div) == pytest.approx(max_lr)
    assert one_cycle_lr(100, total, max_lr, 0.25, div, final_div) == pytest.approx(
        max_lr / final_div
    )


def test_one_cycle_lr_is_cosine_between():
    # half-way through warm-up: mean of start and peak; half-way down: mean of peak and end
    lr = one_cycle_lr(10, 80, 1.0, 0.25, 10.0, 100.0)
    assert lr == pytest.approx((0.1 + 1.0) / 2)
    assert one_cycle_lr(50, 81, 1.0, 0.25, 10.0, 100.0) == pytest.approx((1.0 + 0.01) / 2)
    quarter = one_cycle_lr(5, 80, 1.0, 0.25, 10.0, 100.0)
    assert quarter == pytest.approx(1.0 + (0.1 - 1.0) / 2 * (1 + math.cos(math.pi * 0.25)))


def test_momentum_mirrors_lr():
    assert one_cycle_momentum(0, 100, 0.25) == pytest.approx(0.95)
    assert one_cycle_momentum(25, 100, 0.25) == pytest.approx(0.85)
    assert one_cycle_momentum(100, 100, 0.25) == pytest.approx(0.95)
    assert one_cycle_momentum(60, 91, 1 / 3) == pytest.approx((0.85 + 0.95) / 2)  # half-way down


def test_linear_strength():
    assert linear(0, 5, 0.2, 1.0) == pytest.approx(0.2)
    assert linear(2, 5, 0.2, 1.0) == pytest.approx(0.6)
    assert linear(4, 5, 0.2, 1.0) == pytest.approx(1.0)
    assert linear(0, 1, 0.2, 1.0) == pytest.approx(1.0)

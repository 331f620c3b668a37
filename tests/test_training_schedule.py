"""Warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import itertools
import math

import pytest

from harmonia.training.schedule import WarmupCosine, warmup_cosine_factor


def test_warmup_rises_linearly_then_cosine_decays() -> None:
    schedule = WarmupCosine(2.0, total_steps=10, warmup_fraction=0.2)
    got = [schedule(step) for step in range(10)]
    assert got[:3] == pytest.approx([1.0, 2.0, 2.0])
    assert all(a >= b for a, b in itertools.pairwise(got[2:]))
    # half-way through the cosine part the rate is half the peak
    assert schedule(6) == pytest.approx(1.0)
    assert schedule(10) == pytest.approx(0.0, abs=1e-12)


def test_min_ratio_and_constant() -> None:
    assert warmup_cosine_factor(100, 100, 0, min_ratio=0.1) == pytest.approx(0.1)
    constant = WarmupCosine(2.0, 5, 0.0, cosine=False)
    assert [constant(s) for s in range(5)] == [2.0] * 5


def test_no_warmup_starts_at_peak() -> None:
    assert warmup_cosine_factor(0, 50, 0) == 1.0
    assert warmup_cosine_factor(25, 50, 0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))
    assert warmup_cosine_factor(500, 50, 0) == pytest.approx(0.0, abs=1e-12)  # past the end

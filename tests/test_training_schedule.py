"""Warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from harmonia.training.schedule import build_scheduler, warmup_cosine_factor


def lrs(total: int, warmup_fraction: float, **kw: object) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = build_scheduler(opt, total, warmup_fraction, **kw)  # type: ignore[arg-type]
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_rises_linearly_then_cosine_decays() -> None:
    got = lrs(10, 0.2)
    assert got[:2] == pytest.approx([1.0, 2.0])
    assert got[2] == pytest.approx(2.0)
    assert all(a >= b for a, b in itertools.pairwise(got[2:]))
    # half-way through the cosine part the rate is half the peak
    assert warmup_cosine_factor(6, 10, 2) == pytest.approx(0.5)
    assert warmup_cosine_factor(10, 10, 2) == pytest.approx(0.0, abs=1e-12)


def test_min_ratio_and_constant() -> None:
    assert warmup_cosine_factor(100, 100, 0, min_ratio=0.1) == pytest.approx(0.1)
    assert lrs(5, 0.0, cosine=False) == [2.0] * 5


def test_no_warmup_starts_at_peak() -> None:
    assert warmup_cosine_factor(0, 50, 0) == 1.0
    assert warmup_cosine_factor(25, 50, 0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))


def test_scheduler_state_resumes(tmp_path: object) -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, 20, 0.25)
    for _ in range(7):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched2 = build_scheduler(opt2, 20, 0.25)
    sched2.load_state_dict(state)
    opt2.load_state_dict(opt.state_dict())
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    opt.step(), opt2.step(), sched.step(), sched2.step()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]

"""Batch space: classic PCGrad on whole-batch encoder gradients, checked against torchjd."""

from __future__ import annotations

import itertools

import torch
from torchjd.aggregation import PCGrad
from torchjd.autojac import jac_to_grad, mtl_backward

from harmonia.harmonization import Harmonizer
from harmonizer_reference import (
    Problem,
    grads_of,
    harmonized_grads,
    make_problem,
    max_deviation,
    pcgrad_flat,
    reference_grads,
    zero_grads,
)


def torchjd_grads(problem: Problem) -> list[torch.Tensor]:
    """torchjd's multi-task backward: PCGrad on the encoder, plain gradients on the heads."""
    zero_grads(problem)
    losses, anchor = problem.forward()
    shared = list(problem.encoder.parameters())
    tasks = [
        [*problem.heads[k].parameters(), *problem.towers[k].parameters()]
        for k in range(len(losses))
    ]
    mtl_backward(list(losses.values()), features=anchor, shared_params=shared, tasks_params=tasks)
    jac_to_grad(shared, PCGrad())
    return grads_of(problem)


def test_two_losses_match_torchjd_pcgrad() -> None:
    problem = make_problem(tasks=2, batch=6, seed=1)
    got, stats = harmonized_grads(problem, Harmonizer("pcgrad", "batch"))
    assert float(stats.cosine[0]) < 0  # the batch gradients conflict, so surgery happened
    assert max_deviation(got, torchjd_grads(problem)) <= 1e-10


def test_three_losses_torchjd_result_is_pcgrad_for_one_of_the_orders() -> None:
    problem = make_problem(tasks=3, batch=6, seed=2)
    per_task = [list(itertools.permutations([j for j in range(3) if j != i])) for i in range(3)]
    candidates = []
    for choice in itertools.product(*per_task):
        orders = torch.tensor([list(c) for c in choice])
        candidates.append(
            reference_grads(problem, "batch", lambda v, i, o=orders: pcgrad_flat(v, o))
        )
    torch.manual_seed(0)
    for _ in range(3):
        want = torchjd_grads(problem)
        assert min(max_deviation(c, want) for c in candidates) <= 1e-10
    got, _ = harmonized_grads(problem, Harmonizer("pcgrad", "batch", seed=5))
    assert min(max_deviation(c, got) for c in candidates) <= 1e-10


def test_encoder_can_be_passed_instead_of_captured() -> None:
    problem = make_problem(tasks=2, seed=3)
    zero_grads(problem)
    losses, anchor = problem.forward()
    Harmonizer("pcgrad", "batch").backward(losses, anchor, encoder=problem.encoder)
    assert max_deviation(grads_of(problem), torchjd_grads(problem)) <= 1e-10

"""Method ``pcgrad`` (Yu et al. 2020) on Gram matrices against flat-vector surgery and torchjd."""

from __future__ import annotations

import itertools

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings
from torchjd.aggregation import PCGrad as TorchjdPCGrad

from harmonia.harmonization.methods import PCGrad
from harmonia.harmonization.methods.base import random_orders
from harmonizer_reference import pcgrad_flat, random_vectors


@pytest.mark.parametrize("tasks", [2, 3, 4])
def test_matches_surgery_on_flat_vectors(tasks: int) -> None:
    vectors = random_vectors(16, tasks, 6, seed=tasks)
    gram = vectors @ vectors.transpose(1, 2)
    orders = random_orders(16, tasks, torch.Generator().manual_seed(1), torch.device("cpu"))
    coefficients = PCGrad().combine_in_order(gram, orders).coefficients
    got = (coefficients[:, :, None] * vectors).sum(1)
    want = torch.stack([pcgrad_flat(list(vectors[i]), orders[i]) for i in range(16)])
    assert torch.allclose(got, want, atol=1e-12)


def test_two_losses_match_torchjd_exactly() -> None:
    vectors = random_vectors(12, 2, 5, seed=7)
    coefficients = PCGrad()(vectors @ vectors.transpose(1, 2), torch.Generator()).coefficients
    for i in range(12):
        want = TorchjdPCGrad()(vectors[i])
        assert torch.allclose((coefficients[i, :, None] * vectors[i]).sum(0), want, atol=1e-12)


def test_three_losses_torchjd_result_is_one_of_the_orders() -> None:
    """torchjd draws its orders from the global RNG; its answer must be ours for some order."""
    vectors = random_vectors(1, 3, 4, seed=8)[0]
    vectors[1] = -0.8 * vectors[0] + 0.3 * vectors[1]  # make conflicts likely
    gram = (vectors @ vectors.T)[None]
    candidates = []
    per_task = [list(itertools.permutations([j for j in range(3) if j != i])) for i in range(3)]
    for choice in itertools.product(*per_task):
        orders = torch.tensor([list(c) for c in choice])[None]
        coef = PCGrad().combine_in_order(gram, orders).coefficients[0]
        candidates.append(coef @ vectors)
    torch.manual_seed(0)
    for _ in range(5):
        want = TorchjdPCGrad()(vectors)
        assert min(float((c - want).abs().max()) for c in candidates) < 1e-12
    assert max(float((c - candidates[0]).abs().max()) for c in candidates) > 1e-3  # orders matter


def test_no_conflict_means_plain_sum_and_no_projection() -> None:
    vectors = random_vectors(8, 3, 5, seed=9).abs()  # positive entries: all inner products > 0
    combination = PCGrad()(vectors @ vectors.transpose(1, 2), torch.Generator())
    assert torch.equal(combination.coefficients, torch.ones(8, 3, dtype=torch.float64))
    assert int(combination.info["projections"]) == 0


def test_zero_gradient_is_harmless() -> None:
    vectors = random_vectors(3, 2, 4, seed=10)
    vectors[:, 1] = 0.0
    coefficients = PCGrad()(vectors @ vectors.transpose(1, 2), torch.Generator()).coefficients
    assert torch.equal(coefficients, torch.ones(3, 2, dtype=torch.float64))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), dim=st.integers(1, 6), scale=st.floats(1e-3, 1e3))
def test_two_losses_never_conflict_after_surgery(seed: int, dim: int, scale: float) -> None:
    vectors = random_vectors(8, 2, dim, seed) * scale
    gram = vectors @ vectors.transpose(1, 2)
    coefficients = PCGrad()(gram, torch.Generator()).coefficients
    inner = (coefficients[:, None, :] @ gram).squeeze(1)  # <result, g_k>
    assert bool((inner >= -1e-10 * scale**2).all())

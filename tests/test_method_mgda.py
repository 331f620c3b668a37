"""Method ``mgda`` (Désidéri 2012): the exact min-norm point of each sample's convex hull."""

from __future__ import annotations

import torch
from hypothesis import settings

from harmonia.harmonization.methods import MGDA
from harmonizer_reference import VECTOR_CASES, mgda_flat, random_vectors


def combine(vectors: torch.Tensor) -> torch.Tensor:
    coefficients = MGDA()(vectors @ vectors.transpose(1, 2), torch.Generator()).coefficients
    assert bool((coefficients >= 0).all())
    assert torch.allclose(
        coefficients.sum(-1),
        torch.full((len(vectors),), float(vectors.shape[1]), dtype=torch.float64),
    )
    return (coefficients[:, :, None] * vectors).sum(1)


@settings(max_examples=30, deadline=None)
@VECTOR_CASES
def test_matches_face_enumeration_on_flat_vectors(
    seed: int, tasks: int, dim: int, scale: float
) -> None:
    vectors = random_vectors(6, tasks, dim, seed, scale)
    got = combine(vectors)
    want = torch.stack([mgda_flat(list(v)) for v in vectors])
    assert torch.allclose(got, want, atol=1e-9 * scale, rtol=1e-9)
    # the min-norm point d* satisfies <d*, g_k> >= |d*|^2 for every k (here d = M d*)
    inner = torch.einsum("bd,bkd->bk", got, vectors)
    bound = (got * got).sum(-1, keepdim=True) / tasks
    assert bool((inner >= bound - 1e-9 * scale**2).all())


def test_identical_gradients_give_the_plain_sum() -> None:
    g = torch.randn(2, 1, 5, dtype=torch.float64)
    assert torch.allclose(combine(g.expand(2, 3, 5)), 3 * g[:, 0], atol=1e-12)


def test_pareto_stationary_samples_get_zero_and_are_counted() -> None:
    g = torch.randn(3, 1, 4, dtype=torch.float64)
    vectors = torch.cat([g, -2 * g], 1)
    combination = MGDA()(vectors @ vectors.transpose(1, 2), torch.Generator())
    assert torch.allclose(
        (combination.coefficients[:, :, None] * vectors).sum(1),
        torch.zeros(3, 4, dtype=torch.float64),
        atol=1e-12,
    )
    assert int(combination.info["stationary"]) == 3

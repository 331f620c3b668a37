"""Method ``upgrad`` (Quinton & Rey 2024): exact dual-cone projections from the Gram matrix."""

from __future__ import annotations

import torch
from hypothesis import settings

from harmonia.harmonization.methods import UPGrad
from harmonizer_reference import VECTOR_CASES, random_vectors, upgrad_flat, upgrad_multiplier


def combine(vectors: torch.Tensor) -> torch.Tensor:
    coefficients = UPGrad()(vectors @ vectors.transpose(1, 2), torch.Generator()).coefficients
    return (coefficients[:, :, None] * vectors).sum(1)


@settings(max_examples=30, deadline=None)
@VECTOR_CASES
def test_matches_nnls_projection_on_flat_vectors(
    seed: int, tasks: int, dim: int, scale: float
) -> None:
    """Includes rank-deficient cases (dim < tasks), where the multipliers are not unique.

    Working from the Gram matrix squares the conditioning of a projection: when it needs large
    multipliers ``l`` (gradients that nearly cancel), the error grows like ``eps (1 + |l|)^2``;
    the tolerance says so (about 1e-12 relative for well-conditioned samples).
    """
    vectors = random_vectors(6, tasks, dim, seed, scale)
    got = combine(vectors)
    for v, result in zip(vectors, got, strict=True):
        want = upgrad_flat(list(v))
        tolerance = 1e-12 * scale * (1.0 + upgrad_multiplier(list(v))) ** 2
        assert float((result - want).abs().max()) <= tolerance
        inner = v @ result  # conflicts with no loss, up to the same error
        assert bool((inner >= -tolerance * v.norm(dim=-1) * dim**0.5).all())


def test_no_conflict_means_plain_sum() -> None:
    vectors = torch.rand(5, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    combination = UPGrad()(vectors @ vectors.transpose(1, 2), torch.Generator())
    assert torch.allclose(
        combination.coefficients, torch.ones(5, 3, dtype=torch.float64), atol=1e-12
    )
    assert int(combination.info["projections"]) == 0


def test_opposite_gradients_cancel() -> None:
    g = torch.randn(1, 1, 5, dtype=torch.float64)
    assert torch.allclose(
        combine(torch.cat([g, -g], 1)), torch.zeros(1, 5, dtype=torch.float64), atol=1e-12
    )

"""Method ``upgrad`` (Quinton & Rey 2024): exact dual-cone projections from the Gram matrix."""

from __future__ import annotations

import torch
from hypothesis import settings

from harmonia.harmonization.methods import UPGrad
from harmonizer_reference import VECTOR_CASES, upgrad_flat


def combine(vectors: torch.Tensor) -> torch.Tensor:
    coefficients = UPGrad()(vectors @ vectors.transpose(1, 2), torch.Generator()).coefficients
    return (coefficients[:, :, None] * vectors).sum(1)


@settings(max_examples=30, deadline=None)
@VECTOR_CASES
def test_matches_nnls_projection_on_flat_vectors(
    seed: int, tasks: int, dim: int, scale: float
) -> None:
    """Includes rank-deficient cases (dim < tasks), where the multipliers are not unique."""
    vectors = scale * torch.randn(
        6, tasks, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
    )
    got = combine(vectors)
    want = torch.stack([upgrad_flat(list(v)) for v in vectors])
    assert torch.allclose(got, want, atol=1e-9 * scale, rtol=1e-9)
    inner = torch.einsum("bd,bkd->bk", got, vectors)
    assert bool((inner >= -1e-9 * scale**2).all())  # conflicts with no loss


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

"""Ledger noisiness scores: the paper's conflict, the gradient-norm score and the online loss score."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from harmonia.harmonization.stats import noisiness_scores, relative_norms


def grams(vectors: torch.Tensor) -> torch.Tensor:
    """Per-sample Gram [B, M, M] of per-loss gradient vectors [B, M, P]."""
    return vectors @ vectors.transpose(1, 2)


def reference(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Brute force: smallest pairwise cosine, and (1 - r) / (1 + r) of the largest norm ratio."""
    batch, tasks, _ = vectors.shape
    norms = np.linalg.norm(vectors, axis=2)
    conflict = np.array(
        [
            min(
                vectors[i, j] @ vectors[i, k] / (norms[i, j] * norms[i, k])
                for j in range(tasks)
                for k in range(j + 1, tasks)
            )
            for i in range(batch)
        ]
    )
    medians = [np.sort(norms[:, k])[(batch - 1) // 2] for k in range(tasks)]
    r = np.max(norms / np.array(medians)[None, :], axis=1)
    return conflict, (1 - r) / (1 + r)


@given(
    batch=st.integers(2, 9),
    tasks=st.integers(2, 4),
    seed=st.integers(0, 10_000),
)
def test_scores_match_a_brute_force_reference(batch: int, tasks: int, seed: int) -> None:
    vectors = torch.randn(batch, tasks, 7, generator=torch.Generator().manual_seed(seed)).double()
    conflict, norm = reference(vectors.numpy())
    gram = grams(vectors)
    np.testing.assert_allclose(noisiness_scores(gram, "conflict").numpy(), conflict, atol=1e-12)
    got = noisiness_scores(gram, "gradient_norm").numpy()
    np.testing.assert_allclose(got, norm, atol=1e-12)
    assert np.all((got > -1) & (got <= 1))


def test_gradient_norm_score_flags_the_sample_whose_loss_does_not_fit() -> None:
    torch.manual_seed(0)
    vectors = torch.randn(16, 2, 5).double()
    vectors[3, 1] *= 20.0  # sample 3's second loss pulls far harder than anyone's
    score = noisiness_scores(grams(vectors), "gradient_norm")
    assert int(score.argmin()) == 3 and float(score[3]) < -0.7  # r > 5.6
    # each loss is compared with its own median: rescaling one loss changes nothing
    scaled = vectors.clone()
    scaled[:, 0] *= 1e-3
    torch.testing.assert_close(noisiness_scores(grams(scaled), "gradient_norm"), score)


def test_a_loss_without_gradient_is_left_out_of_the_ratio() -> None:
    vectors = torch.randn(6, 2, 4, generator=torch.Generator().manual_seed(1)).double()
    vectors[:, 1] = 0.0  # e.g. every sample's audio missing: no va gradient at all
    ratios = relative_norms(grams(vectors))
    assert torch.equal(ratios[:, 1], torch.zeros(6, dtype=torch.float64))
    assert bool(torch.isfinite(noisiness_scores(grams(vectors))).all())


def loss_reference(losses: np.ndarray) -> np.ndarray:
    """Brute force: (1 - r) / (1 + r) of each sample's largest loss over its loss's batch median."""
    tasks = losses.shape[1]
    ratios = np.zeros_like(losses)
    for k in range(tasks):
        present = np.sort(losses[:, k][losses[:, k] > 0])
        if present.size:
            ratios[:, k] = losses[:, k] / present[(present.size - 1) // 2]
    r = ratios.max(axis=1)
    return (1 - r) / (1 + r)


@given(batch=st.integers(2, 9), tasks=st.integers(1, 4), seed=st.integers(0, 10_000))
def test_the_loss_score_matches_a_brute_force_reference(batch: int, tasks: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    losses = torch.rand(batch, tasks, generator=generator, dtype=torch.float64) * 5
    losses[0, 0] = 0.0  # a sample without that loss (e.g. no audio) is left out of the median
    got = noisiness_scores(None, "loss", losses=losses).numpy()
    np.testing.assert_allclose(got, loss_reference(losses.numpy()), atol=1e-12)
    assert np.all((got >= -1) & (got <= 1))


def test_the_loss_score_flags_the_sample_that_does_not_fit_and_needs_no_gradients() -> None:
    losses = torch.full((8, 2), 1.0, dtype=torch.float64)
    losses[5, 1] = 9.0  # sample 5's partner does not fit
    score = noisiness_scores(None, "loss", losses=losses)
    assert int(score.argmin()) == 5 and float(score[5]) == pytest.approx(-0.8)
    assert float(score[0]) == 0.0  # at the batch median
    with pytest.raises(ValueError, match="per-sample losses"):
        noisiness_scores(None, "loss")
    with pytest.raises(ValueError, match="Gram"):
        noisiness_scores(None, "conflict", losses=losses)

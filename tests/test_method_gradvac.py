"""Method ``gradvac`` (Wang et al. 2021) against flat-vector surgery and torchjd."""

from __future__ import annotations

import pytest
import torch
from torchjd.aggregation import GradVac as TorchjdGradVac

from harmonia.harmonization.methods import GradVac
from harmonia.harmonization.methods.base import random_orders
from harmonizer_reference import gradvac_flat, random_vectors


@pytest.mark.parametrize("tasks", [2, 3])
def test_matches_surgery_on_flat_vectors_and_moves_the_targets(tasks: int) -> None:
    method = GradVac(beta=0.25)
    target = torch.zeros(tasks, tasks, dtype=torch.float64)
    generator = torch.Generator().manual_seed(2)
    for step in range(3):
        vectors = random_vectors(10, tasks, 5, seed=10 * tasks + step)
        gram = vectors @ vectors.transpose(1, 2)
        orders = random_orders(10, tasks, generator, torch.device("cpu"))
        coefficients = method.combine_in_order(gram, orders).coefficients
        results = [gradvac_flat(list(vectors[i]), orders[i], target) for i in range(10)]
        want = torch.stack([r[0] for r in results])
        assert torch.allclose((coefficients[:, :, None] * vectors).sum(1), want, atol=1e-12)
        target = 0.75 * target + 0.25 * torch.stack([r[1] for r in results]).mean(0)
        assert torch.allclose(method.state_dict()["target"], target, atol=1e-12)


def test_correction_lands_exactly_on_the_target_cosine() -> None:
    """With two losses, C = (1 + w_1, 1 + w_0): g_0 + w_0 g_1 has cosine exactly t with g_1."""
    target = 0.4
    method = GradVac(beta=0.0)
    method.load_state_dict(
        {"target": torch.tensor([[0.0, target], [target, 0.0]], dtype=torch.float64)}
    )
    vectors = random_vectors(32, 2, 7, seed=3)
    gram = vectors @ vectors.transpose(1, 2)
    coefficients = method(gram, torch.Generator()).coefficients
    g0, g1 = vectors[:, 0], vectors[:, 1]
    cos = torch.nn.functional.cosine_similarity(g0, g1, dim=-1)
    raised_0 = g0 + (coefficients[:, 1] - 1)[:, None] * g1
    raised_1 = g1 + (coefficients[:, 0] - 1)[:, None] * g0
    low = cos < target
    assert bool(low.any()) and bool((~low).any())
    for raised, other in ((raised_0, g1), (raised_1, g0)):
        after = torch.nn.functional.cosine_similarity(raised, other, dim=-1)
        assert torch.allclose(after[low], torch.full_like(after[low], target), atol=1e-12)
    assert torch.equal(coefficients[~low], torch.ones_like(coefficients[~low]))


def test_two_losses_one_sample_matches_torchjd_over_steps() -> None:
    ours = GradVac(beta=0.5)
    theirs = TorchjdGradVac(beta=0.5, eps=0.0)
    for step in range(4):
        vectors = random_vectors(1, 2, 6, seed=20 + step)
        coefficients = ours(vectors @ vectors.transpose(1, 2), torch.Generator()).coefficients
        assert torch.allclose(coefficients[0] @ vectors[0], theirs(vectors[0]), atol=1e-12)


def test_state_round_trip_and_validation() -> None:
    method = GradVac()
    assert method.state_dict() == {}
    vectors = random_vectors(4, 3, 5, seed=5)
    method(vectors @ vectors.transpose(1, 2), torch.Generator())
    state = method.state_dict()
    other = GradVac()
    other.load_state_dict(state)
    assert torch.equal(other.state_dict()["target"], state["target"])
    with pytest.raises(ValueError, match="unknown gradvac state keys"):
        other.load_state_dict({"targets": state["target"]})


def test_target_near_one_stays_finite() -> None:
    method = GradVac(beta=0.0)
    method.load_state_dict({"target": torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)})
    vectors = random_vectors(5, 2, 3, seed=6)
    coefficients = method(vectors @ vectors.transpose(1, 2), torch.Generator()).coefficients
    assert bool(coefficients.isfinite().all())

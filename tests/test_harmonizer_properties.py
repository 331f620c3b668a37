"""Properties on random problems (hypothesis): conflicts removed, equivariance, scale invariance."""

from __future__ import annotations

import hypothesis.strategies as st
import torch
from hypothesis import given, settings

from harmonia.harmonization import Harmonizer
from harmonizer_reference import brute_force, harmonized_grads, make_problem, max_deviation

SETTINGS = settings(max_examples=8, deadline=None)


@SETTINGS
@given(seed=st.integers(0, 10_000), space=st.sampled_from(["embedding", "parameters"]))
def test_after_pcgrad_no_sample_conflicts_with_either_loss(seed: int, space: str) -> None:
    """Two losses: each sample's harmonized gradient has <h_i, g_ik> >= 0 for both k."""
    problem = make_problem(tasks=2, batch=6, seed=seed)
    _, stats = harmonized_grads(problem, Harmonizer("pcgrad", space))
    if space == "parameters":
        per_sample = brute_force(problem).per_sample  # [B, M, P]
    else:
        per_sample = brute_force(problem).u.transpose(0, 1)  # [B, M, D]
    harmonized = (stats.coefficients[:, :, None] * per_sample).sum(1)
    inner = torch.einsum("bp,bkp->bk", harmonized, per_sample)
    scale = float((per_sample**2).sum(-1).max())
    assert bool((inner >= -1e-10 * scale).all())
    original = torch.einsum("bjp,bkp->bjk", per_sample, per_sample)[:, 0, 1]
    if bool((original < 0).any()):  # and where there was a conflict, something changed
        assert bool((stats.coefficients[original < 0] != 1).any())


@SETTINGS
@given(
    seed=st.integers(0, 10_000),
    case=st.sampled_from([("pcgrad", 2), ("gradvac", 2), ("none", 3), ("upgrad", 3), ("mgda", 3)]),
    space=st.sampled_from(["embedding", "parameters"]),
    data=st.data(),
)
def test_permuting_samples_permutes_stats_and_keeps_gradients(
    seed: int, case: tuple[str, int], space: str, data: st.DataObject
) -> None:
    method, tasks = case
    problem = make_problem(tasks=tasks, batch=5, seed=seed)
    order = torch.tensor(data.draw(st.permutations(range(5))))
    got, stats = harmonized_grads(problem, Harmonizer(method, space))
    got_perm, stats_perm = harmonized_grads(problem.permuted(order), Harmonizer(method, space))
    assert max_deviation(got, got_perm) <= 1e-10
    assert torch.allclose(stats.gram[order], stats_perm.gram, atol=1e-10)
    assert torch.allclose(stats.coefficients[order], stats_perm.coefficients, atol=1e-8)


@SETTINGS
@given(
    seed=st.integers(0, 10_000),
    factor=st.floats(1e-3, 1e4),
    space=st.sampled_from(["embedding", "parameters", "batch"]),
)
def test_cosines_are_invariant_to_scaling_a_loss(seed: int, factor: float, space: str) -> None:
    problem = make_problem(tasks=3, batch=5, seed=seed)
    _, stats = harmonized_grads(problem, Harmonizer("none", space))
    problem.scales = [factor, 1.0, 1.0]
    _, scaled = harmonized_grads(problem, Harmonizer("none", space))
    assert torch.allclose(stats.cosines, scaled.cosines, atol=1e-10)
    assert torch.allclose(scaled.norms[:, 0], factor * stats.norms[:, 0], rtol=1e-10)


@SETTINGS
@given(
    seed=st.integers(0, 10_000),
    method=st.sampled_from(["pcgrad", "gradvac", "upgrad", "mgda"]),
)
def test_scaling_all_losses_scales_the_gradients(seed: int, method: str) -> None:
    """What a GradScaler does: coefficients do not change, gradients scale linearly."""
    problem = make_problem(tasks=3, batch=5, seed=seed)
    plain, stats = harmonized_grads(problem, Harmonizer(method, "parameters"))
    problem.scales = [1024.0] * 3
    scaled, stats_scaled = harmonized_grads(problem, Harmonizer(method, "parameters"))
    assert torch.allclose(stats.coefficients, stats_scaled.coefficients, atol=1e-8)
    assert max_deviation([g * 1024.0 for g in plain], scaled) <= 1e-7

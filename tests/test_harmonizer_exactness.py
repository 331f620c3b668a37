"""Accumulated gradients equal brute-force per-sample references, for every method and space."""

from __future__ import annotations

import pytest
import torch

from harmonia.harmonization import Harmonizer
from harmonia.harmonization.methods.base import random_orders
from harmonizer_reference import (
    brute_force,
    gradvac_flat,
    harmonized_grads,
    make_problem,
    max_deviation,
    mgda_flat,
    pcgrad_flat,
    plain_grads,
    plain_sum,
    reference_grads,
    upgrad_flat,
)

SPACES = ["embedding", "parameters", "batch"]


def orders_for(seed: int, batch: int, tasks: int) -> torch.Tensor:
    """The orders the Harmonizer's generator draws first (PCGrad/GradVac use them)."""
    return random_orders(batch, tasks, torch.Generator().manual_seed(seed), torch.device("cpu"))


@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("tasks", [2, 3])
def test_none_equals_plain_backward(space: str, tasks: int) -> None:
    problem = make_problem(tasks=tasks, seed=tasks)
    got, _ = harmonized_grads(problem, Harmonizer("none", space))
    assert max_deviation(got, plain_grads(problem)) <= 1e-10


@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("tasks", [2, 3, 4])
def test_pcgrad_matches_brute_force(space: str, tasks: int) -> None:
    problem = make_problem(tasks=tasks, seed=10 + tasks)
    got, stats = harmonized_grads(problem, Harmonizer("pcgrad", space, seed=7))
    rows = 1 if space == "batch" else problem.x.shape[0]
    orders = orders_for(7, rows, tasks)
    want = reference_grads(problem, space, lambda v, i: pcgrad_flat(v, orders[i]))
    assert max_deviation(got, want) <= 1e-8
    assert float(stats.info["projections"]) > 0  # the batch really had conflicts


@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("tasks", [2, 3])
def test_gradvac_matches_brute_force_over_two_steps(space: str, tasks: int) -> None:
    problem = make_problem(tasks=tasks, seed=20 + tasks)
    harmonizer = Harmonizer("gradvac", space, seed=3, beta=0.3)
    rows = 1 if space == "batch" else problem.x.shape[0]
    generator = torch.Generator().manual_seed(3)
    target = torch.zeros(tasks, tasks, dtype=torch.float64)
    for _ in range(2):
        orders = random_orders(rows, tasks, generator, torch.device("cpu"))
        phis: list[torch.Tensor] = []

        def surgery(
            v: list[torch.Tensor],
            i: int,
            orders: torch.Tensor = orders,
            target: torch.Tensor = target,
            phis: list[torch.Tensor] = phis,
        ) -> torch.Tensor:
            out, phi = gradvac_flat(v, orders[i], target)
            phis.append(phi)
            return out

        want = reference_grads(problem, space, surgery)
        got, _ = harmonized_grads(problem, harmonizer)
        assert max_deviation(got, want) <= 1e-8
        observed = torch.stack(phis[:rows]).mean(0)
        target = (1 - 0.3) * target + 0.3 * observed
        target.fill_diagonal_(0.0)
        assert torch.allclose(harmonizer.method.state_dict()["target"], target, atol=1e-10)


@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("tasks", [2, 3, 4])
@pytest.mark.parametrize("method", ["upgrad", "mgda"])
def test_active_set_methods_match_brute_force(method: str, space: str, tasks: int) -> None:
    problem = make_problem(tasks=tasks, seed=30 + tasks)
    got, _ = harmonized_grads(problem, Harmonizer(method, space))
    surgery = upgrad_flat if method == "upgrad" else mgda_flat
    assert max_deviation(got, reference_grads(problem, space, surgery)) <= 1e-8


@pytest.mark.parametrize("tasks", [2, 3])
def test_parameter_space_cosines_and_norms_match_brute_force(tasks: int) -> None:
    problem = make_problem(tasks=tasks, batch=6, seed=50 + tasks)
    _, stats = harmonized_grads(problem, Harmonizer("none", "parameters"))
    per_sample = brute_force(problem).per_sample  # [B, M, P]
    gram = per_sample @ per_sample.transpose(1, 2)
    norms = gram.diagonal(dim1=1, dim2=2).sqrt()
    cosines = gram / (norms[:, :, None] * norms[:, None, :])
    assert torch.allclose(stats.cosines, cosines, atol=1e-8, rtol=0)
    assert torch.allclose(stats.norms, norms, atol=1e-8, rtol=0)
    assert (stats.cosines < -0.05).any()  # a test batch with real conflicts


def test_embedding_space_cosines_are_those_of_the_anchor_gradients() -> None:
    problem = make_problem(tasks=3, seed=61)
    _, stats = harmonized_grads(problem, Harmonizer("none", "embedding"))
    u = brute_force(problem).u  # [M, B, D]
    cos = torch.nn.functional.cosine_similarity(u[:, None], u[None, :], dim=-1).permute(2, 0, 1)
    assert torch.allclose(stats.cosines, cos, atol=1e-12)


@pytest.mark.parametrize("method", ["pcgrad", "upgrad", "mgda"])
def test_fallback_layers_are_exact(method: str) -> None:
    """A broadcast direct Parameter, a Conv1d and an RMSNorm (once all torch.func): exact."""
    problem = make_problem(tasks=2, seed=70, variant="fallback")
    surgery = {
        "pcgrad": lambda v, i: pcgrad_flat(v, orders_for(0, problem.x.shape[0], 2)[i]),
        "upgrad": upgrad_flat,
        "mgda": mgda_flat,
    }[method]
    got, stats = harmonized_grads(problem, Harmonizer(method, "parameters", seed=0))
    assert max_deviation(got, reference_grads(problem, "parameters", surgery)) <= 1e-8
    per_sample = brute_force(problem).per_sample
    assert torch.allclose(stats.gram, per_sample @ per_sample.transpose(1, 2), atol=1e-8, rtol=0)


@pytest.mark.parametrize("space", SPACES)
def test_shared_encoder_only_the_anchor_call_is_harmonized(space: str) -> None:
    """The encoder also encodes loss 0's other side; that path keeps its plain gradient."""
    problem = make_problem(tasks=2, seed=80, shared=True)
    got, _ = harmonized_grads(problem, Harmonizer("pcgrad", space))
    orders = orders_for(0, problem.x.shape[0], 2)
    assert (
        max_deviation(got, reference_grads(problem, space, lambda v, i: pcgrad_flat(v, orders[i])))
        <= 1e-8
    )


def test_curriculum_weights_scale_only_the_anchor_path() -> None:
    problem = make_problem(tasks=2, batch=6, seed=90)
    weights = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.0, 0.25], dtype=torch.float64)

    class Fixed:
        def weights(self, score: torch.Tensor, progress: float) -> torch.Tensor:
            return weights

    got, stats = harmonized_grads(
        problem, Harmonizer("pcgrad", "parameters", curriculum=Fixed()), progress=0.1
    )
    orders = orders_for(0, 6, 2)
    want = reference_grads(problem, "parameters", lambda v, i: pcgrad_flat(v, orders[i]), weights)
    assert max_deviation(got, want) <= 1e-8
    assert torch.equal(stats.weights, weights)


def test_sum_of_plain_paths_is_unchanged_by_surgery() -> None:
    """Heads and towers get exactly the plain gradient whatever the method does."""
    problem = make_problem(tasks=3, seed=95)
    plain = plain_grads(problem)
    got, _ = harmonized_grads(problem, Harmonizer("mgda", "parameters"))
    n_enc = len(list(problem.encoder.parameters()))
    assert max_deviation(got[n_enc:], plain[n_enc:]) <= 1e-12
    assert max_deviation(got[:n_enc], plain[:n_enc]) > 1e-4


@pytest.mark.parametrize("space", SPACES)
def test_the_brute_force_reference_itself_reproduces_plain_backward(space: str) -> None:
    """Sanity check of the test oracle: with no surgery it must give the plain gradients."""
    problem = make_problem(tasks=3, seed=99, shared=True)
    assert max_deviation(reference_grads(problem, space, plain_sum), plain_grads(problem)) <= 1e-10

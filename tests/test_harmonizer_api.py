"""Harmonizer arguments, stats, metrics and state: what a training loop relies on."""

from __future__ import annotations

import io

import pytest
import torch

from harmonia.harmonization import (
    METHODS,
    SPACES,
    CurriculumLike,
    Harmonizer,
    build_curriculum,
)
from harmonizer_reference import (
    harmonized_grads,
    make_problem,
    max_deviation,
    plain_sum,
    reference_grads,
    zero_grads,
)


def test_unknown_method_or_space_lists_the_valid_names() -> None:
    with pytest.raises(ValueError, match="valid methods: none, pcgrad, gradvac, upgrad, mgda"):
        Harmonizer("pcgard")
    with pytest.raises(ValueError, match="valid spaces: embedding, parameters, batch"):
        Harmonizer("pcgrad", "weights")
    with pytest.raises(ValueError, match=r"unknown option.*betta.*valid options: beta"):
        Harmonizer("gradvac", betta=0.1)
    with pytest.raises(ValueError, match="valid options: none"):
        Harmonizer("pcgrad", beta=0.1)
    with pytest.raises(ValueError, match="beta must be in"):
        Harmonizer("gradvac", beta=2.0)


def test_curriculum_contract_is_checked() -> None:
    with pytest.raises(ValueError, match="weights\\(score, progress\\)"):
        Harmonizer(curriculum=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="space='batch' does not measure"):
        Harmonizer(space="batch", curriculum=Keep())
    problem = make_problem()
    with pytest.raises(ValueError, match="needs progress"):
        harmonized_grads(problem, Harmonizer(curriculum=Keep()))


class Keep:
    def weights(self, score: torch.Tensor, progress: float) -> torch.Tensor:
        return (score > -0.5).double()


class WrongShape:
    def weights(self, score: torch.Tensor, progress: float) -> torch.Tensor:
        return torch.ones(3)


def test_curriculum_weights_are_validated_and_recorded() -> None:
    problem = make_problem(batch=6, seed=4)
    with pytest.raises(ValueError, match="shape \\(3,\\), expected \\(6,\\)"):
        harmonized_grads(problem, Harmonizer(curriculum=WrongShape()), progress=0.5)
    _, stats = harmonized_grads(problem, Harmonizer(curriculum=Keep()), progress=0.5)
    assert torch.equal(stats.weights, (stats.conflict > -0.5).double())
    assert stats.to_metrics()["curriculum/kept_fraction"] == pytest.approx(
        float((stats.conflict > -0.5).double().mean())
    )


def test_bad_losses_and_anchor_are_rejected() -> None:
    problem = make_problem()
    harmonizer = Harmonizer()
    losses, anchor = problem.forward()
    first = next(iter(losses))
    with pytest.raises(ValueError, match="at least two losses"):
        harmonizer.backward({first: losses[first]}, anchor)
    with pytest.raises(ValueError, match="must be a scalar"):
        harmonizer.backward({"a": losses[first], "b": anchor.sum(1)}, anchor)
    with pytest.raises(ValueError, match="requires grad"):
        harmonizer.backward(losses, anchor.detach())
    with pytest.raises(ValueError, match="2 sample_ids for a batch of 5"):
        harmonizer.backward(losses, anchor, sample_ids=["a", "b"])


def test_parameters_space_needs_capture_and_batch_space_needs_encoder() -> None:
    problem = make_problem()
    losses, anchor = problem.forward()
    with pytest.raises(ValueError, match=r"harmonizer\.capture"):
        Harmonizer(space="parameters").backward(losses, anchor)
    with pytest.raises(ValueError, match="needs the encoder"):
        Harmonizer(space="batch").backward(losses, anchor)
    # a wrong module captured: the anchor depends on none of its calls
    harmonizer = Harmonizer(space="parameters", verify=False)
    with harmonizer.capture(problem.towers):
        losses, anchor = problem.forward()
    with pytest.raises(ValueError, match="depends on none of the captured modules"):
        harmonizer.backward(losses, anchor)


@pytest.mark.parametrize("tasks", [2, 3])
def test_stats_shapes_and_metrics(tasks: int) -> None:
    problem = make_problem(tasks=tasks, batch=7, seed=5)
    ids = [f"s{i}" for i in range(7)]
    _, stats = harmonized_grads(problem, Harmonizer("pcgrad", "parameters"), sample_ids=ids)
    assert stats.names == tuple(problem.names)
    assert stats.cosine.shape == ((7,) if tasks == 2 else (7, tasks, tasks))
    assert stats.norms.shape == (7, tasks) and bool((stats.norms > 0).all())
    assert stats.conflict.shape == (7,) and stats.weights.shape == (7,)
    assert stats.sample_ids == tuple(ids)
    cos = stats.cosines
    upper = torch.triu_indices(tasks, tasks, 1)
    assert torch.equal(stats.conflict, cos[:, upper[0], upper[1]].amin(-1))
    metrics = stats.to_metrics()
    pairs = [f"l{j}~l{k}" for j in range(tasks) for k in range(j + 1, tasks)]
    for j, pair in enumerate(pairs):
        values = cos[:, upper[0, j], upper[1, j]]
        assert metrics[f"conflict/{pair}/fraction"] == pytest.approx(
            float((values < 0).double().mean())
        )
        assert metrics[f"conflict/{pair}/mean_cos"] == pytest.approx(float(values.mean()))
    assert metrics["curriculum/kept_fraction"] == 1.0
    assert metrics["harmonizer/projections"] == float(stats.info["projections"])
    assert all(isinstance(v, float) for v in metrics.values())


def test_batch_space_stats_describe_one_batch_sample() -> None:
    problem = make_problem(tasks=2, seed=6)
    _, stats = harmonized_grads(problem, Harmonizer("pcgrad", "batch"))
    assert stats.gram.shape == (1, 2, 2) and stats.cosine.shape == (1,)


def test_state_dict_round_trip_restores_targets_and_random_orders() -> None:
    problem = make_problem(tasks=3, seed=7)
    first = Harmonizer("gradvac", "embedding", seed=11, beta=0.5)
    harmonized_grads(problem, first)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    second = Harmonizer("gradvac", "embedding", seed=99, beta=0.5)
    second.load_state_dict(state)
    got_first, stats_first = harmonized_grads(problem, first)
    got_second, stats_second = harmonized_grads(problem, second)
    assert all(torch.equal(a, b) for a, b in zip(got_first, got_second, strict=True))
    assert torch.equal(stats_first.coefficients, stats_second.coefficients)
    fresh = Harmonizer("gradvac", "embedding", seed=11, beta=0.5)
    got_fresh, _ = harmonized_grads(problem, fresh)  # no targets yet: differs
    assert not all(torch.equal(a, b) for a, b in zip(got_first, got_fresh, strict=True))
    with pytest.raises(ValueError, match="saved for method 'gradvac'"):
        Harmonizer("pcgrad").load_state_dict(state)


def test_registry_and_spaces_are_public() -> None:
    assert list(METHODS) == ["none", "pcgrad", "gradvac", "upgrad", "mgda"]
    assert SPACES == ("embedding", "parameters", "batch")
    assert "pcgrad" in repr(Harmonizer())


def test_backward_accumulates_like_loss_backward() -> None:
    """Two harmonized backwards add up in .grad, as two loss.backward() calls would."""
    problem = make_problem(seed=8)
    harmonizer = Harmonizer("pcgrad", "parameters")
    once, _ = harmonized_grads(problem, harmonizer)
    zero_grads(problem)
    for _ in range(2):
        with harmonizer.capture(problem.encoder):
            losses, anchor = problem.forward()
        harmonizer.backward(losses, anchor)
    twice = [p.grad for p in problem.parameters()]
    for a, b in zip(once, twice, strict=True):
        assert b is not None and torch.allclose(2 * a, b, atol=1e-12)


def test_retain_graph_allows_a_second_backward() -> None:
    problem = make_problem(seed=9)
    losses, anchor = problem.forward()
    Harmonizer("pcgrad").backward(losses, anchor, retain_graph=True)
    sum(losses.values()).backward()  # type: ignore[union-attr]
    losses, anchor = problem.forward()
    Harmonizer("pcgrad").backward(losses, anchor)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        sum(losses.values()).backward()  # type: ignore[union-attr]


@pytest.mark.parametrize("name", ["threshold", "sigmoid", "quantile"])
def test_shipped_curricula_satisfy_the_protocol_and_weight_the_anchor_path(name: str) -> None:
    curriculum = build_curriculum(name)
    assert isinstance(curriculum, CurriculumLike)
    problem = make_problem(batch=8, seed=21)
    got, stats = harmonized_grads(
        problem, Harmonizer("none", "embedding", curriculum=curriculum), progress=0.0
    )
    assert torch.equal(stats.weights, curriculum.weights(stats.conflict, 0.0).double())
    assert 0 < float(stats.weights.sum()) < 8  # early in training some samples are held back
    want = reference_grads(problem, "embedding", plain_sum, stats.weights)
    assert max_deviation(got, want) <= 1e-10

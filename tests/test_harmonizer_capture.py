"""Capture and the per-layer Gram rules: coverage, exactness per layer kind, clear errors."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harmonia.harmonization import Harmonizer, layer_grams
from harmonizer_reference import (
    assert_exact,
    harmonized_grads,
    make_problem,
)

WIDTH = 8


class TokenEncoder(nn.Module):
    """Word ids with padding and repeated words -> Embedding -> pooled, like a text tower."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(6, WIDTH, padding_idx=0)
        self.mix = nn.Linear(WIDTH, WIDTH)

    def forward(self, ids: Tensor) -> Tensor:
        return torch.tanh(self.mix(self.embed(ids))).sum(1)


def test_embedding_with_padding_and_repeated_indices_is_exact() -> None:
    ids = torch.tensor([[1, 1, 2, 0], [3, 0, 0, 0], [2, 2, 2, 5], [4, 1, 4, 1], [5, 3, 0, 0]])
    assert_exact(make_problem(encoder=TokenEncoder(), x=ids, seed=1))


class Twice(nn.Module):
    """The same Linear twice on the anchor path (cross terms), on 2-D input, modified in place."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(3, WIDTH)
        self.square = nn.Linear(WIDTH, WIDTH)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x.mean(1))
        h = self.square(torch.tanh(h))
        h = torch.relu_(h)  # in-place on a captured output
        return self.square(h) + h


def test_module_called_twice_on_flat_input_with_inplace_output_is_exact() -> None:
    assert_exact(make_problem(encoder=Twice(), seed=2))


@pytest.mark.parametrize("shape", [(2, 16, 16), (20, 3, 3)], ids=["ghost", "materialized"])
def test_linear_weight_gram_branches_match_explicit_per_sample_gradients(
    shape: tuple[int, int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    steps, width_in, width_out = shape
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(6, steps, width_in, generator=gen, dtype=torch.float64)
    d = [torch.randn(6, steps, width_out, generator=gen, dtype=torch.float64) for _ in range(3)]
    explicit = torch.stack([torch.einsum("bto,bti->boi", dk, a).flatten(1) for dk in d], 1)
    want = explicit @ explicit.transpose(1, 2)
    monkeypatch.setattr(
        layer_grams, "MATERIALIZE_BUDGET", 2 * 3 * width_in * width_out
    )  # chunks of 2
    assert torch.allclose(layer_grams.linear_weight_gram(a, d), want, atol=1e-12)


def test_eval_batchnorm_goes_through_the_functional_fallback_exactly() -> None:
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(12, WIDTH), nn.BatchNorm1d(WIDTH), nn.Tanh())
    with torch.no_grad():
        encoder[2].running_mean.normal_()
        encoder[2].running_var.uniform_(0.5, 2.0)
    encoder.eval()
    assert_exact(make_problem(encoder=encoder, seed=4))


def test_batchnorm_in_training_mode_is_a_clear_error() -> None:
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(12, WIDTH), nn.BatchNorm1d(WIDTH))
    harmonizer = Harmonizer("pcgrad", "parameters")
    with (
        pytest.raises(ValueError, match="2 \\(BatchNorm1d\\) normalizes with batch statistics"),
        harmonizer.capture(encoder),
    ):
        pass
    assert all(not m._forward_hooks for m in encoder.modules())
    Harmonizer("pcgrad", "embedding").capture(encoder).__enter__()  # other spaces do not care


class Centered(nn.Module):
    """Subtracts the batch mean: no parameters of its own, but it couples the samples."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(3, WIDTH)
        self.out = nn.Linear(WIDTH, WIDTH)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x).mean(1)
        return self.out(h - h.mean(0))


def test_parameter_free_sample_mixing_is_detected_by_the_probe() -> None:
    problem = make_problem(encoder=Centered(), seed=5)
    with pytest.raises(ValueError, match="mixes samples after inp \\(Linear\\)"):
        harmonized_grads(problem, Harmonizer("pcgrad", "parameters"))


class Scaled(nn.Module):
    """A directly registered parameter in a module whose own forward mixes samples."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(3, WIDTH)
        self.scale = nn.Parameter(torch.ones(WIDTH))

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x).mean(1) * self.scale
        return h + h.mean(0)


def test_functional_fallback_verifies_sample_independence() -> None:
    problem = make_problem(encoder=Scaled(), seed=6)
    with pytest.raises(ValueError, match="different output when run on one sample at a time"):
        harmonized_grads(problem, Harmonizer("pcgrad", "parameters", verify=False))


class Noisy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(3, WIDTH)
        self.scale = nn.Parameter(torch.ones(WIDTH))

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(self.inp(x).mean(1), 0.5, training=True) * self.scale


def test_random_operations_in_a_fallback_module_are_a_clear_error() -> None:
    problem = make_problem(encoder=Noisy(), seed=7)
    with pytest.raises(ValueError, match="uses randomness"):
        harmonized_grads(problem, Harmonizer("pcgrad", "parameters"))


class Tied(nn.Module):
    """Reads an Embedding's table directly, never calling the Embedding module."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(3, WIDTH)
        self.table = nn.Embedding(4, WIDTH)

    def forward(self, x: Tensor) -> Tensor:
        return self.inp(x).mean(1) + self.table.weight[1]


def test_parameters_used_outside_their_module_are_detected() -> None:
    problem = make_problem(encoder=Tied(), seed=8)
    with pytest.raises(ValueError, match=r"parameter 'table\.weight' receives gradient"):
        harmonized_grads(problem, Harmonizer("pcgrad", "parameters"))


class TimeFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(3, WIDTH)

    def forward(self, x: Tensor) -> Tensor:
        return self.inp(x.transpose(0, 1)).mean(0)


def test_layers_must_see_the_batch_first() -> None:
    problem = make_problem(encoder=TimeFirst(), seed=9)
    with pytest.raises(ValueError, match="needs the batch first"):
        harmonized_grads(problem, Harmonizer("pcgrad", "parameters", verify=False))


class WithAux(nn.Module):
    """A fallback module returning a tuple whose second element is not on the anchor path."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, WIDTH))
        self.inp = nn.Linear(3, WIDTH)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.inp(x).mean(1)
        return torch.tanh(h * self.gain), (h * self.gain).sum()


class AuxEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = WithAux()

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)[0]


def test_fallback_with_tuple_outputs_is_exact() -> None:
    assert_exact(make_problem(encoder=AuxEncoder(), seed=10))


def test_shared_encoder_with_a_larger_second_call_is_exact() -> None:
    """Like K captions per sample: the other call has 3B rows and is off the anchor path."""
    assert_exact(make_problem(seed=11, shared=True, other_batch=15))


def test_hooks_and_activations_do_not_outlive_the_step() -> None:
    problem = make_problem(seed=12)
    harmonizer = Harmonizer("pcgrad", "parameters")
    seen: list[weakref.ref[Tensor]] = []
    handle = problem.encoder.fc1.register_forward_hook(
        lambda m, a, out: seen.append(weakref.ref(out))
    )
    with harmonizer.capture(problem.encoder):
        losses, anchor = problem.forward()
        assert any(
            m._forward_hooks for m in problem.encoder.modules() if m is not problem.encoder.fc1
        )
    handle.remove()
    assert all(not m._forward_hooks for m in problem.encoder.modules())
    harmonizer.backward(losses, anchor)
    del losses, anchor
    gc.collect()
    assert seen and seen[0]() is None
    assert harmonizer._capture is None


def test_hooks_are_removed_when_the_forward_raises() -> None:
    problem = make_problem(seed=13)
    harmonizer = Harmonizer("pcgrad", "parameters")
    with pytest.raises(RuntimeError, match="boom"), harmonizer.capture(problem.encoder):
        raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in problem.encoder.modules())


def test_no_grad_forward_records_nothing() -> None:
    problem = make_problem(seed=14)
    harmonizer = Harmonizer("pcgrad", "parameters")
    with torch.no_grad(), harmonizer.capture(problem.encoder):
        problem.forward()
    assert harmonizer._capture is not None and not harmonizer._capture.calls

"""The contract every registered method keeps, checked for each (a new method gets it for free):
coefficients of the right shape, finite; invariant to the losses' scale; the plain sum when no
pair conflicts (unless the method says otherwise); its state round-trips."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harmonia.harmonization.methods import METHODS

NAMES = sorted(METHODS)


def _gram(batch: int, tasks: int, seed: int, positive: bool = False) -> torch.Tensor:
    vectors = torch.randn(batch, tasks, 6, generator=torch.Generator().manual_seed(seed)).double()
    if positive:  # every entry >= 0: no pair of gradients conflicts
        vectors = vectors.abs()
    return vectors @ vectors.transpose(1, 2)


def _combine(method: object, gram: torch.Tensor, seed: int = 0) -> torch.Tensor:
    return method(gram, torch.Generator().manual_seed(seed)).coefficients  # type: ignore[operator]


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 6),
    tasks=st.integers(2, 4),
    seed=st.integers(0, 10_000),
    scale=st.floats(1e-3, 1e3),
)
def test_coefficients_are_finite_and_invariant_to_the_losses_scale(
    name: str, batch: int, tasks: int, seed: int, scale: float
) -> None:
    gram = _gram(batch, tasks, seed)
    coefficients = _combine(METHODS[name](), gram)
    assert coefficients.shape == (batch, tasks) and coefficients.dtype == torch.float64
    assert bool(torch.isfinite(coefficients).all())
    scaled = _combine(METHODS[name](), gram * scale**2)  # every gradient times `scale`
    torch.testing.assert_close(scaled, coefficients, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_that_conflict_nowhere_are_summed_unless_the_method_says_otherwise(
    name: str,
) -> None:
    cls = METHODS[name]
    coefficients = _combine(cls(), _gram(5, 3, seed=1, positive=True))
    plain = bool(torch.allclose(coefficients, torch.ones_like(coefficients)))
    assert plain is cls.sums_without_conflict


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trips_into_a_fresh_instance(name: str) -> None:
    cls = METHODS[name]
    used = cls()
    _combine(used, _gram(4, 3, seed=2))  # stateful methods (GradVac) move their state here
    state = used.state_dict()
    fresh, blank = cls(), cls()
    fresh.load_state_dict(state)
    later = _gram(4, 3, seed=3)
    expected = _combine(used, later, seed=5)
    torch.testing.assert_close(_combine(fresh, later, seed=5), expected)
    if state:  # the state matters: without it the same call gives another answer
        assert not torch.allclose(_combine(blank, later, seed=5), expected)

"""DropToken keeps a random per-sample subset of tokens in training and all of them in eval."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harmonia.models import DropToken
from harmonia.models.droptoken import take


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(1, 40), st.floats(0.0, 0.95), st.integers(0, 1000))
def test_training_keeps_an_ordered_subset_of_each_sample(
    batch: int, length: int, rate: float, seed: int
) -> None:
    torch.manual_seed(seed)
    drop = DropToken(rate).train()
    tokens = (
        torch.arange(batch * length, dtype=torch.float64).view(batch, length, 1).expand(-1, -1, 3)
    )
    kept = drop(tokens)
    assert kept.shape == (batch, drop.kept(length), 3)
    assert kept.shape[1] == max(1, round((1 - rate) * length))
    for b in range(batch):
        ids = kept[b, :, 0]
        assert torch.all(ids[1:] > ids[:-1])
        assert torch.all((ids >= b * length) & (ids < (b + 1) * length))


def test_subsets_differ_between_samples_and_eval_is_identity() -> None:
    torch.manual_seed(0)
    drop = DropToken(0.5)
    tokens = torch.arange(64.0).view(1, 64, 1).expand(8, -1, -1).contiguous()
    kept = drop.train()(tokens)
    assert len({tuple(row[:, 0].tolist()) for row in kept}) == 8
    assert drop.eval()(tokens) is tokens
    assert DropToken(0.0).train()(tokens) is tokens


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 12), st.integers(1, 12), st.integers(0, 2), st.data())
def test_take_picks_each_samples_rows(
    batch: int, length: int, kept: int, trailing: int, data: st.DataObject
) -> None:
    kept = min(kept, length)
    x = torch.randn(batch, length, *([3] * trailing))
    rows = [
        data.draw(st.lists(st.integers(0, length - 1), min_size=kept, max_size=kept))
        for _ in range(batch)
    ]
    keep = torch.tensor(rows)
    got = take(x, keep)
    assert got.shape == (batch, kept, *x.shape[2:])
    for b in range(batch):
        assert torch.equal(got[b], x[b, keep[b]])
    assert take(x, None) is x


def test_keep_draws_what_forward_drops() -> None:
    drop = DropToken(0.4).train()
    tokens = torch.randn(5, 20, 4)
    torch.manual_seed(3)
    dropped = drop(tokens)
    torch.manual_seed(3)
    keep = drop.keep(5, 20, tokens.device)
    assert keep is not None and keep.shape == (5, drop.kept(20))
    assert torch.equal(take(tokens, keep), dropped)
    assert drop.eval().keep(5, 20, tokens.device) is None


def test_rate_outside_range_is_rejected() -> None:
    with pytest.raises(ValueError, match="rate"):
        DropToken(1.0)

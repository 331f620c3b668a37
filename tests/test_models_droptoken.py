"""DropToken keeps a random per-sample subset of tokens in training and all of them in eval."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harmonia.models import DropToken


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


def test_rate_outside_range_is_rejected() -> None:
    with pytest.raises(ValueError, match="rate"):
        DropToken(1.0)

"""Resumable batch order: a stream restored from its state yields exactly the batches that came next."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import Dataset

from harmonia.harmonization.ledger import ConflictLedger
from harmonia.harmonization.sampler import CurriculumSampler
from harmonia.training.batches import BatchStream, EpochSampler


class Numbers(Dataset):
    """Sample i is its index plus a random number drawn in the worker (checks worker seeding)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.ids = [f"s{i:03d}" for i in range(size)]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"id": self.ids[index], "noise": float(torch.rand(()))}


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": [it["id"] for it in items], "noise": [it["noise"] for it in items]}


def stream(sampler: Any, workers: int = 0, size: int = 10) -> BatchStream:
    return BatchStream(
        Numbers(size), sampler, batch_size=3, collate_fn=collate, num_workers=workers, seed=5
    )


def take(s: BatchStream, n: int) -> list[list[str]]:
    return [next(s)["id"] for _ in range(n)]


def test_epoch_sampler_is_a_seeded_permutation() -> None:
    a, b = EpochSampler(10, seed=1), EpochSampler(10, seed=1)
    assert list(a) == list(b) and sorted(a) == list(range(10))
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == list(range(10))
    assert list(EpochSampler(10, seed=2)) != first


def test_stream_crosses_epochs_dropping_the_last_partial_batch() -> None:
    s = stream(EpochSampler(10, seed=0))
    batches = take(s, 7)
    assert all(len(b) == 3 for b in batches)
    assert s.epoch == 2 and s.consumed == 1
    assert len({i for b in batches[:3] for i in b}) == 9  # one epoch: no repeats
    assert batches[:3] != batches[3:6]  # a new order each epoch


def test_loading_leaves_the_global_generator_alone() -> None:
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    s = stream(EpochSampler(10, seed=0))
    first = next(s)["noise"]
    assert torch.equal(torch.rand(3), expected)
    again = stream(EpochSampler(10, seed=0))
    assert next(again)["noise"] == first  # per-sample randomness is seeded by the index


@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_stream_continues_exactly(workers: int) -> None:
    reference = stream(EpochSampler(10, seed=0), workers)
    expected = [next(reference) for _ in range(8)]
    first = stream(EpochSampler(10, seed=0), workers)
    got = [next(first) for _ in range(4)]
    state = first.state_dict()
    first.close()
    second = stream(EpochSampler(10, seed=0), workers)
    second.load_state_dict(state)
    got += [next(second) for _ in range(4)]
    assert [b["id"] for b in got] == [b["id"] for b in expected]
    if workers:  # worker-side randomness is reproducible too
        assert [b["noise"] for b in got] == [b["noise"] for b in expected]


def test_resume_with_the_curriculum_sampler() -> None:
    def make() -> tuple[BatchStream, ConflictLedger]:
        ledger = ConflictLedger()
        sampler = CurriculumSampler(Numbers(10).ids, ledger, seed=3)
        return stream(sampler), ledger

    def run(s: BatchStream, ledger: ConflictLedger, n: int, start: int) -> list[list[str]]:
        out = []
        for step in range(start, start + n):
            ids = next(s)["id"]
            ledger.update(ids, torch.linspace(-1, 1, len(ids)), step)
            out.append(ids)
        return out

    ref, ref_ledger = make()
    expected = run(ref, ref_ledger, 8, 0)
    first, ledger = make()
    got = run(first, ledger, 5, 0)
    state, ledger_state = first.state_dict(), ledger.state_dict()
    second, ledger2 = make()
    ledger2.load_state_dict(ledger_state)
    second.load_state_dict(state)
    got += run(second, ledger2, 3, 5)
    assert got == expected


def test_stream_measures_waiting_time() -> None:
    s = stream(EpochSampler(10))
    take(s, 2)
    assert s.take_wait() > 0.0
    assert s.take_wait() == 0.0


def test_dataset_smaller_than_a_batch() -> None:
    with pytest.raises(ValueError, match="fewer than one batch"):
        stream(EpochSampler(2), size=2)

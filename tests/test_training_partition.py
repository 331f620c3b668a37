"""Splitting data across ranks: equal steps per rank, W ranks x B = 1 process x W*B, resume at
another world size, and shard splits that agree with WebDataset's."""

from __future__ import annotations

from typing import Any

import pytest
import webdataset as wds
from torch.utils.data import Dataset

from harmonia.errors import CheckpointError, ConfigError
from harmonia.training.batches import BatchStream, EpochSampler
from harmonia.training.partition import (
    RankEpochSampler,
    split_shards,
    steps_per_epoch,
    stream_batches,
)

SIZE = 23  # not a multiple of any world size below


class Indices(Dataset[int]):
    def __len__(self) -> int:
        return SIZE

    def __getitem__(self, index: int) -> int:
        return index


def streams(world: int, batch: int, state: dict[str, Any] | None = None) -> list[BatchStream]:
    out = []
    for rank in range(world):
        stream = BatchStream(
            Indices(),
            RankEpochSampler(SIZE, seed=3, rank=rank, world_size=world),
            batch_size=batch,
            collate_fn=list,
            seed=3,
        )
        if state is not None:
            stream.load_state_dict(state)
        out.append(stream)
    return out


def global_step(ranks: list[BatchStream]) -> list[int]:
    """The samples of one step over all ranks (each rank draws its next batch)."""
    return sorted(i for stream in ranks for i in next(stream))


def test_one_rank_is_the_epoch_sampler() -> None:
    plain, ranked = EpochSampler(SIZE, seed=5), RankEpochSampler(SIZE, seed=5)
    for epoch in range(3):
        plain.set_epoch(epoch)
        ranked.set_epoch(epoch)
        assert list(ranked) == list(plain)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_ranks_split_the_epoch_evenly_and_disjointly(world: int) -> None:
    samplers = [RankEpochSampler(SIZE, seed=1, rank=r, world_size=world) for r in range(world)]
    shares = [list(s) for s in samplers]
    assert all(len(share) == len(samplers[0]) == SIZE // world for share in shares)
    union = [i for share in shares for i in share]
    assert len(set(union)) == len(union)
    order = EpochSampler(SIZE, seed=1).order().tolist()
    assert sorted(union) == sorted(order[: SIZE // world * world])


def test_w_ranks_with_batch_b_see_the_batches_of_one_process_with_batch_wb() -> None:
    one = streams(1, batch=6)
    two = streams(2, batch=3)
    for _ in range(7):  # crosses the end of the first epoch (23 // 6 = 3 steps per epoch)
        assert global_step(two) == global_step(one)


def test_resume_with_another_world_size_continues_the_global_order() -> None:
    order = EpochSampler(SIZE, seed=3).order().tolist()
    two = streams(2, batch=2)
    for _ in range(3):
        global_step(two)
    state = two[0].state_dict()  # rank 0's state is every rank's: the position is global
    assert state["sampler"]["global_position"] == 12
    assert two[1].state_dict() == state

    three = streams(3, batch=2, state=state)
    assert global_step(three) == sorted(order[12:18])
    assert three[2].state_dict()["sampler"]["global_position"] == 18
    single = streams(1, batch=3, state=three[0].state_dict())
    assert global_step(single) == sorted(order[18:21])
    assert single[0].state_dict()["epoch"] == 0
    # the rest of the epoch (2 samples) makes no batch of 3: the next batch opens epoch 1
    next_epoch = EpochSampler(SIZE, seed=3)
    next_epoch.set_epoch(1)
    assert global_step(single) == sorted(next_epoch.order().tolist()[:3])


def test_a_single_process_checkpoint_resumes_under_torchrun() -> None:
    plain = EpochSampler(SIZE, seed=2)
    plain.set_epoch(1)
    ranked = [RankEpochSampler(SIZE, seed=2, rank=r, world_size=2) for r in range(2)]
    for sampler in ranked:
        sampler.load_state_dict(plain.state_dict(consumed=8))
    union = sorted(i for s in ranked for i in s)
    assert union == sorted(plain.order().tolist()[8:22])


def test_bad_positions_and_worlds_are_refused() -> None:
    sampler = RankEpochSampler(SIZE, world_size=2)
    with pytest.raises(CheckpointError, match="sample 40 of an epoch of 23"):
        sampler.load_state_dict({"epoch": 0, "position": 20, "global_position": 40})
    with pytest.raises(ConfigError, match="rank 2 is outside a world of 2"):
        RankEpochSampler(SIZE, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="3 samples cannot be split between 4 ranks"):
        RankEpochSampler(3, world_size=4)


@pytest.mark.parametrize(("world", "workers"), [(1, 1), (2, 1), (2, 3), (3, 2)])
def test_shard_split_agrees_with_webdataset(
    world: int, workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    shards = [f"train-{i:04d}.tar" for i in range(11)]
    seen = []
    for rank in range(world):
        for worker in range(workers):
            for name, value in {
                "RANK": rank,
                "WORLD_SIZE": world,
                "WORKER": worker,
                "NUM_WORKERS": workers,
            }.items():
                monkeypatch.setenv(name, str(value))
            theirs = list(wds.split_by_worker(wds.split_by_node(iter(shards))))
            mine = split_shards(shards, rank, world, worker, workers)
            assert mine == theirs
            seen += mine
    assert sorted(seen) == shards


def test_fewer_shards_than_ranks_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="2 shards cannot feed 3 ranks"):
        split_shards(["a.tar", "b.tar"], 0, 3)


def test_stream_steps_are_the_full_batches_of_the_poorest_rank() -> None:
    sizes = [10, 7, 5, 3]
    # rank 0 reads shards 0, 2 (15 samples: 3 batches of 4); rank 1 shards 1, 3 (10: 2)
    assert stream_batches(sizes, batch_size=4, world_size=2) == 2
    # per worker: rank 0 -> 10 // 4 + 5 // 4 = 3; rank 1 -> 7 // 4 + 3 // 4 = 1
    assert stream_batches(sizes, batch_size=4, world_size=2, num_workers=2) == 1
    assert stream_batches(sizes, batch_size=4, world_size=1) == sum(sizes) // 4
    assert steps_per_epoch(SIZE, batch_size=3, world_size=2) == 3
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        stream_batches(sizes, batch_size=0, world_size=1)

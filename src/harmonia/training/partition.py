"""Splitting the data across ranks (and DataLoader workers) so every rank runs the same steps.

Under DDP every rank must take the same number of steps per epoch (a rank that stops early
leaves the others waiting in a collective). `RankEpochSampler` splits the single-process
epoch order round-robin between ranks: step ``s`` of W ranks with batch B sees exactly the
samples of step ``s`` of one process with batch W*B, its position is counted in *global*
samples, so a run can resume with a different number of processes. For the streaming loader,
`split_shards` says which shards a rank's worker reads (as WebDataset's ``split_by_node`` then
``split_by_worker`` do) and `stream_batches` how many full batches each rank gets from them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from harmonia.errors import CheckpointError, ConfigError
from harmonia.training.batches import EpochSampler


class RankEpochSampler(EpochSampler):
    """This rank's share of `EpochSampler`'s permutation: indices ``rank, rank + W, ...``.

    Each epoch the remaining global order (from the resume position on) is truncated to a
    multiple of the world size, so all ranks yield the same number of indices; the at most
    W - 1 samples cut off differ between epochs. With ``world_size=1`` it is `EpochSampler`.
    """

    def __init__(self, size: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"RankEpochSampler: rank {rank} is outside a world of {world_size}")
        if size < world_size:
            raise ConfigError(
                f"RankEpochSampler: {size} samples cannot be split between {world_size} ranks"
            )
        super().__init__(size, seed)
        self.rank = rank
        self.world_size = world_size
        self._base = (0, 0)
        """(global position, this rank's position) where the current epoch's iteration began."""

    def __len__(self) -> int:
        return self.size // self.world_size

    def set_epoch(self, epoch: int, progress: float | None = None) -> None:
        if epoch != self.epoch:
            self._base = (0, 0)
        super().set_epoch(epoch, progress)

    def __iter__(self) -> Iterator[int]:
        start, _ = self._base
        remaining = self.size - start
        stop = start + remaining // self.world_size * self.world_size
        yield from self.order()[start + self.rank : stop : self.world_size].tolist()

    def global_position(self, consumed: int) -> int:
        """Global samples of this epoch consumed once this rank has consumed ``consumed``."""
        start, local = self._base
        if consumed < local:
            raise ValueError(f"consumed {consumed} is before the resume point {local}")
        return start + (consumed - local) * self.world_size

    def state_dict(self, consumed: int | None = None) -> dict[str, Any]:
        """Epoch, this rank's consumed count and the global position (for any world size)."""
        local = self._base[1] if consumed is None else consumed
        return {
            "epoch": self.epoch,
            "position": local,
            "global_position": self.global_position(local),
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the saved epoch at its global position, whatever world size saved it.

        Also reads `EpochSampler` states (a single-process run resumed under torchrun).
        """
        epoch, local = int(state["epoch"]), int(state["position"])
        start = int(state.get("global_position", local))
        if not 0 <= start <= self.size:
            raise CheckpointError(
                f"sampler state is at sample {start} of an epoch of {self.size} samples"
            )
        self.epoch = epoch
        self._base = (start, local)


def split_shards(
    shards: Sequence[str], rank: int, world_size: int, worker: int = 0, num_workers: int = 1
) -> list[str]:
    """The shards worker ``worker`` of rank ``rank`` reads, in order (as WebDataset splits).

    Raises ConfigError when there are fewer shards than ranks (a rank would get no data).
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"split_shards: rank {rank} is outside a world of {world_size}")
    if num_workers < 1 or not 0 <= worker < num_workers:
        raise ConfigError(f"split_shards: worker {worker} is outside {num_workers} workers")
    if len(shards) < world_size:
        raise ConfigError(
            f"{len(shards)} shards cannot feed {world_size} ranks: write at least one shard per "
            "rank (harmonia data build --shard-size) or use the map-style loader"
        )
    return list(shards[rank::world_size][worker::num_workers])


def stream_batches(
    shard_samples: Sequence[int], batch_size: int, world_size: int, num_workers: int = 1
) -> int:
    """Steps per epoch for the streaming loader: the full batches the poorest rank gets.

    ``shard_samples`` are the sample counts of the shards in the epoch's shard order. Each
    DataLoader worker batches its own shards, so a rank's full batches are the sum over its
    workers; stop every rank after this many steps so none waits for another.
    """
    if batch_size < 1:
        raise ConfigError(f"stream_batches: batch_size must be >= 1, got {batch_size}")
    names = [str(i) for i in range(len(shard_samples))]
    per_rank = []
    for rank in range(world_size):
        full = 0
        for worker in range(num_workers):
            mine = split_shards(names, rank, world_size, worker, num_workers)
            full += sum(shard_samples[int(i)] for i in mine) // batch_size
        per_rank.append(full)
    return min(per_rank)


def steps_per_epoch(num_samples: int, batch_size: int, world_size: int) -> int:
    """Steps per epoch with `RankEpochSampler` and dropped last batches: N // W // B."""
    if batch_size < 1 or world_size < 1:
        raise ConfigError("steps_per_epoch: batch_size and world_size must be >= 1")
    return num_samples // world_size // batch_size

"""Training batches from WebDataset shards read in sequence (``data.streaming: true``)."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import torch
from torch.utils.data import DataLoader

from harmonia.data.streaming import StreamingDataset
from harmonia.errors import DataError
from harmonia.training.batches import BatchSource
from harmonia.training.partition import steps_per_epoch, stream_batches
from harmonia.training.signals import worker_signal_handlers


class StreamBatches(BatchSource):
    """Endless batches of a `StreamingDataset` over epochs, with a saved position.

    Every rank ends an epoch after the full batches of the poorest rank (`stream_batches` on the
    epoch's shard order), so no rank waits for another in a collective. The stream is the same
    for a seed and an epoch, so a resumed run rebuilds its epoch and replays (decodes and drops)
    the batches before its saved position: the batches that follow are the ones that came next
    before. At another world size the shards split differently: the epoch starts over, and so
    it does when the shard list is another one (e.g. a glob in ``data.train_shards`` that
    matches other files now).

    With user-written shard URLs the samples per shard are unknown: an epoch is then
    ``num_samples // (world_size x batch_size)`` steps (as `steps_per_epoch` counts), and a
    rank whose shards run out before that starts its next epoch early.
    """

    def __init__(
        self,
        dataset: StreamingDataset,
        *,
        world_size: int = 1,
        num_workers: int = 0,
        seed: int = 0,
        pin_memory: bool = False,
    ) -> None:
        self.dataset = dataset
        self.seed = seed
        self.world_size = world_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self._limit = 0
        if dataset.from_urls and len(dataset.shards) < world_size:
            raise ValueError(
                f"{len(dataset.shards)} shard URLs cannot feed {world_size} ranks: give at "
                "least one shard per rank"
            )
        if self.steps_in(0) < 1:
            raise ValueError(
                f"the shards hold less than one full batch per rank ({world_size} ranks x "
                f"{num_workers or 1} loader processes, {len(dataset.shards)} shards)"
            )
        super().__init__(num_workers)

    def steps_in(self, epoch: int) -> int:
        """Batches per rank in ``epoch``."""
        counts = self.dataset.shard_samples
        batch_size = self.dataset.batch_size or 1
        if counts is None:  # user URLs: only their total is known
            return steps_per_epoch(self.dataset.num_samples, batch_size, self.world_size)
        sizes = [counts[name] for name in self.dataset.epoch_shards(epoch)]
        return stream_batches(sizes, batch_size, self.world_size, self.workers)

    @property
    def shard_list(self) -> str:
        """A fingerprint of the shard list (saved with the position)."""
        return hashlib.sha256("\n".join(self.dataset.shards).encode()).hexdigest()[:16]

    @property
    def workers(self) -> int:
        return max(self.num_workers, 1)

    def _open(self) -> None:
        self.dataset.set_epoch(self.epoch)
        loader = DataLoader(
            self.dataset,
            batch_size=None,
            num_workers=self.num_workers,
            # the loader draws its workers' base seed from this, not from the run's generator,
            # so rebuilding an epoch on resume leaves the run's random numbers where they were
            generator=torch.Generator().manual_seed(self.seed + self.epoch),
            worker_init_fn=worker_signal_handlers if self.num_workers else None,
            pin_memory=self.pin_memory,
        )
        self._iterator = iter(loader)
        self._limit = self.steps_in(self.epoch)
        for _ in range(self.consumed):  # replay up to the saved position
            next(self._iterator)

    def __next__(self) -> Any:
        started = time.perf_counter()
        while True:
            try:
                if self._iterator is None:
                    self._open()
                if self.consumed >= self._limit:
                    self._next_epoch()
                    continue
                assert self._iterator is not None
                batch = next(self._iterator)
            except StopIteration:  # fewer batches than planned (skipped samples): next epoch
                if not self.consumed:  # the next epoch would read the same nothing, forever
                    raise self._failed(
                        DataError(f"epoch {self.epoch}: this rank's shards gave no batch")
                    ) from None
                self._next_epoch()
                continue
            except Exception as err:
                raise self._failed(err) from None
            return self._handed(batch, started)

    def state_dict(self) -> dict[str, Any]:
        """Epoch, batches consumed in it, the world size and the shard list they came from."""
        return {
            "epoch": self.epoch,
            "consumed": self.consumed,
            "world_size": self.world_size,
            "shards": self.shard_list,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position (the epoch's start at another world size or with
        another shard list)."""
        self.close()
        self.epoch = int(state["epoch"])
        same = int(state.get("world_size", self.world_size)) == self.world_size
        same = same and state.get("shards", self.shard_list) == self.shard_list
        self.consumed = int(state["consumed"]) if same else 0

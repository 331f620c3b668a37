"""Training batches in a resumable order: a sampler per epoch and the position within it.

The order of an epoch depends only on (seed, epoch) — or, with the curriculum sampler, on the
ledger at the epoch's start, which the sampler's state keeps — and the position counts the
batches the loop has *consumed* (DataLoader workers prefetch ahead of that), so a resumed run
draws exactly the batches the uninterrupted run would have drawn. Any randomness inside a
sample's loading runs under generators seeded by (seed, epoch, index), so it does not depend on
which worker loads the sample or on where a run was resumed, and the loader never draws from
the global torch generator the model uses.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sized
from contextlib import contextmanager
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from harmonia.errors import DataError, first_line
from harmonia.training.signals import worker_signal_handlers


class ResumableSampler(Protocol):
    """What `BatchStream` needs from a sampler (`EpochSampler`, `CurriculumSampler`)."""

    def __iter__(self) -> Iterator[int]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int, progress: float | None = None) -> None: ...

    def state_dict(self, consumed: int | None = None) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class EpochSampler(Sampler[int]):
    """A uniform random permutation per epoch, drawn from (seed, epoch); resumable mid-epoch."""

    def __init__(self, size: int, seed: int = 0) -> None:
        if size < 1:
            raise ValueError(f"cannot sample from an empty dataset (size {size})")
        self.size = size
        self.seed = seed
        self.epoch = 0
        self._start = 0

    def __len__(self) -> int:
        return self.size

    def set_epoch(self, epoch: int, progress: float | None = None) -> None:
        """Start ``epoch`` from its beginning (staying in the current epoch keeps the position)."""
        if epoch != self.epoch:
            self.epoch = epoch
            self._start = 0

    def order(self) -> torch.Tensor:
        """This epoch's permutation of the dataset indices."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.size, generator=generator)

    def __iter__(self) -> Iterator[int]:
        start, self._start = self._start, 0
        yield from self.order()[start:].tolist()

    def state_dict(self, consumed: int | None = None) -> dict[str, Any]:
        """Epoch and how many of its indices were consumed."""
        return {"epoch": self.epoch, "position": 0 if consumed is None else consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the saved epoch at the saved position."""
        self.epoch = int(state["epoch"])
        self._start = int(state["position"])


@contextmanager
def seeded(*key: int) -> Iterator[None]:
    """Seed Python, NumPy and torch (CPU) from ``key`` inside the block, restoring them after."""
    seed = int(np.random.SeedSequence(list(key)).generate_state(1)[0])
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class SeededSamples(Dataset):
    """Loads ``dataset[index]`` for keys ``(epoch, index)`` under `seeded` (seed, epoch, index)."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        try:
            with seeded(self.seed, epoch, index):
                return self.dataset[index]
        except Exception as err:  # raised again in the main process, naming the sample
            ids = getattr(self.dataset, "ids", None)
            name = ids[index] if isinstance(ids, list) and 0 <= index < len(ids) else index
            raise SampleError(f"sample {name}: {type(err).__name__}: {first_line(err)}") from err


class SampleError(Exception):
    """Loading one sample failed in a way no skip record covers (a bug or a hostile sample)."""


class LoaderFailure(DataError):
    """The data loader stopped: a worker raised or died. The workers are shut down."""


def loader_failure_message(err: Exception) -> str:
    """One line for a loader error: torch wraps a worker's exception as "Caught X in
    DataLoader worker process N." + the original traceback, whose last line is the cause."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if lines and lines[0].startswith("Caught ") and len(lines) > 1:
        where = lines[0].removeprefix("Caught ").split(" in ", 1)[-1].rstrip(".")
        cause = lines[-1].split(": ", 1)[-1] if isinstance(err, SampleError) else lines[-1]
        return f"data loading failed in {where}: {cause}"
    if isinstance(err, SampleError):  # loaded in this process (no workers)
        return f"data loading failed: {err}"
    if "exited unexpectedly" in str(err):
        return (
            f"data loading failed: {first_line(err)} (killed, e.g. out of memory? lower "
            "data.num_workers or turn data.cache off)"
        )
    return f"data loading failed: {type(err).__name__}: {first_line(err)}"


def dead_workers_reported_at_next_batch() -> None:
    """Keep torch from installing its SIGCHLD handler in this process.

    That handler raises "worker killed" wherever the main process happens to be, e.g. halfway
    through an optimizer step; without it the loader's own status check raises the same error
    from ``next()`` within seconds, at a step boundary where a checkpoint is consistent.
    """
    from torch.utils.data._utils import signal_handling

    signal_handling._SIGCHLD_handler_set = True


def stop_workers(iterator: Iterator[Any] | None) -> None:
    """Shut a DataLoader iterator's workers down now (they ignore SIGTERM; see signals.py).

    Left to garbage collection, an iterator still referenced by an exception's traceback keeps
    its workers alive, and interpreter exit then waits for them forever.
    """
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    for worker in getattr(iterator, "_workers", []):
        if worker.is_alive():
            worker.kill()
            worker.join(timeout=5)


class _Tagged:
    """The sampler's indices tagged with the epoch, as `SeededSamples` wants them."""

    def __init__(self, sampler: ResumableSampler, epoch: int) -> None:
        self.sampler = sampler
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, index) for index in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class BatchSource:
    """What every source of training batches shares: the epoch and the batches of it handed to
    the loop (its saved position), the time spent waiting, and shutting its workers down."""

    def __init__(self, num_workers: int) -> None:
        self.epoch = 0
        self.consumed = 0
        """Batches of the current epoch handed to the loop."""
        self.wait = 0.0
        """Seconds spent waiting for batches since the last `take_wait`."""
        self._iterator: Iterator[Any] | None = None
        if num_workers:
            dead_workers_reported_at_next_batch()

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        raise NotImplementedError

    def _handed(self, batch: Any, started: float) -> Any:
        """Count ``batch`` as handed to the loop, after waiting since ``started``."""
        self.consumed += 1
        self.wait += time.perf_counter() - started
        return batch

    def _failed(self, err: Exception) -> LoaderFailure:
        """The one-line error of a failed loader (its workers shut down first)."""
        self.close()
        return LoaderFailure(loader_failure_message(err))

    def _next_epoch(self) -> None:
        self.close()
        self.epoch, self.consumed = self.epoch + 1, 0

    def take_wait(self) -> float:
        """Waiting time accumulated since the last call (and reset it)."""
        wait, self.wait = self.wait, 0.0
        return wait

    def close(self) -> None:
        """Shut down worker processes."""
        iterator, self._iterator = self._iterator, None
        stop_workers(iterator)


class BatchStream(BatchSource):
    """Endless batches over epochs with a saved position; measures the time spent waiting."""

    def __init__(
        self,
        dataset: Dataset,
        sampler: ResumableSampler,
        *,
        batch_size: int,
        collate_fn: Callable[[list[Any]], Any],
        num_workers: int = 0,
        seed: int = 0,
        pin_memory: bool = False,
        progress: Callable[[], float] = lambda: 0.0,
    ) -> None:
        size = len(dataset) if isinstance(dataset, Sized) else len(sampler)
        if size < batch_size:
            raise ValueError(f"the dataset has {size} samples, fewer than one batch ({batch_size})")
        self.dataset = dataset
        self.sampler = sampler
        self.batch_size = batch_size
        self.collate_fn = collate_fn
        self.num_workers = num_workers
        self.seed = seed
        self.pin_memory = pin_memory
        self.progress = progress
        super().__init__(num_workers)

    def _loader(self) -> DataLoader:
        # only the workers' base seed comes from this generator; samples are seeded per index
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            SeededSamples(self.dataset, self.seed),
            batch_size=self.batch_size,
            sampler=_Tagged(self.sampler, self.epoch),  # type: ignore[arg-type]
            collate_fn=self.collate_fn,
            num_workers=self.num_workers,
            worker_init_fn=worker_signal_handlers if self.num_workers else None,
            generator=generator,
            drop_last=True,
            pin_memory=self.pin_memory,
        )

    def __next__(self) -> Any:
        started = time.perf_counter()
        while True:
            if self._iterator is None:
                self.sampler.set_epoch(self.epoch, self.progress())
                self._iterator = iter(self._loader())
            try:
                batch = next(self._iterator)
            except StopIteration:
                self._iterator = None
                self.epoch += 1
                self.consumed = 0
                continue
            except Exception as err:
                raise self._failed(err) from None
            return self._handed(batch, started)

    def state_dict(self) -> dict[str, Any]:
        """Epoch, batches consumed in it, and the sampler's state at that point."""
        return {
            "epoch": self.epoch,
            "consumed": self.consumed,
            "sampler": self.sampler.state_dict(consumed=self.consumed * self.batch_size),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position; the next batch is the one that came next before."""
        self.epoch = int(state["epoch"])
        self.consumed = int(state["consumed"])
        self.sampler.load_state_dict(state["sampler"])
        self._iterator = None

"""Map-style dataset: random access to any sample through the tar member offsets in the index.

This is the loader for samplers that choose samples by weight (the conflict curriculum): any
index can be read at any time, in any worker process.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Collection, Sequence
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from harmonia.data.index import load_media_spec, read_index
from harmonia.data.samples import CorruptSample, collate, decode_members, skip_record
from harmonia.data.shards import TruncatedMember, open_shard, read_member
from harmonia.errors import DataError


class ShardDataset(Dataset[dict[str, Any]]):
    """Samples of one or more splits of a built dataset, addressed by position (see `ids`).

    Items are sample dicts {"id", "video", "audio", "text"} or, for a corrupt sample, a skip
    record {"skipped": {"key", "shard", "reason"}}. Labels are not loaded. With verify=True a
    member whose bytes no longer match the SHA-256 in the index is reported as corrupt too.

    Samples whose id is in ``exclude`` are left out (e.g. the suspects a ledger names).

    With cache=True each decoded sample is kept in memory after its first read, so later epochs
    skip decoding (on CPU, decoding a clip costs about as much as its share of a training step).
    Each loader worker process keeps its own cache; corrupt samples are never cached.
    """

    def __init__(
        self,
        root: Path | str,
        split: str | Sequence[str] = "train",
        *,
        verify: bool = True,
        cache: bool = False,
        exclude: Collection[str] = (),
    ) -> None:
        self.root = Path(root)
        self.spec = load_media_spec(self.root)
        dropped = set(exclude)
        records = [r for r in read_index(self.root, split) if r["id"] not in dropped]
        if not records:
            raise DataError(f"{self.root} has no samples in split {split!r}")
        self.split = split
        self.verify = verify
        self.ids: list[str] = [r["id"] for r in records]
        self._where: list[tuple[str, dict[str, tuple[int, int, str]]]] = [
            (
                r["shard"],
                {ext: (m["offset"], m["size"], m["sha256"]) for ext, m in r["members"].items()},
            )
            for r in records
        ]
        self._positions = {sample_id: i for i, sample_id in enumerate(self.ids)}
        self._files: dict[str, BinaryIO] = {}
        self._pid = os.getpid()
        self._cache: dict[int, dict[str, Any]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.ids)

    def index_of(self, sample_id: str) -> int:
        """Position of a sample id (KeyError if absent)."""
        return self._positions[sample_id]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        sample = self._read(index)
        if self._cache is not None and "skipped" not in sample:
            self._cache[index] = sample
        return sample

    def _read(self, index: int) -> dict[str, Any]:
        sample_id = self.ids[index]
        shard, members = self._where[index]
        try:
            fh = self._open(shard)
            raw = {}
            for ext, (offset, size, digest) in members.items():
                raw[ext] = read_member(fh, offset, size)
                if self.verify and hashlib.sha256(raw[ext]).hexdigest() != digest:
                    raise CorruptSample(f"{ext} member does not match its SHA-256 in the index")
            return decode_members(sample_id, raw, self.spec)
        except (CorruptSample, TruncatedMember) as err:
            return skip_record(sample_id, shard, str(err))
        except OSError as err:
            return skip_record(sample_id, shard, f"cannot read shard ({err.strerror or err})")

    def _open(self, shard: str) -> BinaryIO:
        if self._pid != os.getpid():  # forked into a worker: never share file positions
            self._files = {}
            self._pid = os.getpid()
        if shard not in self._files:
            self._files[shard] = open_shard(self.root, shard)
        return self._files[shard]

    def close(self) -> None:
        for fh in self._files.values():
            fh.close()
        self._files = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_files"] = {}
        if state["_cache"] is not None:
            state["_cache"] = {}
        return state

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def make_loader(
    dataset: ShardDataset,
    batch_size: int,
    *,
    sampler: Sampler[int] | None = None,
    shuffle: bool = False,
    num_workers: int = 0,
    seed: int = 0,
    drop_last: bool = False,
    persistent_workers: bool = False,
) -> DataLoader[dict[str, Any]]:
    """A DataLoader over a ShardDataset that yields batch dicts (see collate)."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=shuffle if sampler is None else False,
        num_workers=num_workers,
        collate_fn=partial(collate, spec=dataset.spec),
        drop_last=drop_last,
        generator=generator,
        persistent_workers=persistent_workers and num_workers > 0,
    )

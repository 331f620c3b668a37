"""Streaming loader: WebDataset pipeline over the shards, for data too large for random access.

Shards are shuffled per epoch (same order on every node and worker), split between nodes
(torch.distributed rank) and DataLoader workers, read sequentially, shuffled in a buffer of
encoded samples, decoded and batched. Corrupt members become skip records that ride along with the next batch.

The shards are a split's own (names from the dataset's index, opened as plain files inside the
dataset) or URLs the user wrote (``urls``: opened by WebDataset, ``pipe:`` commands included;
see `harmonia.data.shard_urls`).
"""

from __future__ import annotations

import random
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, BinaryIO

import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset

from harmonia.data.index import load_media_spec, load_summary, read_index, split_shards
from harmonia.data.samples import CorruptSample, collate, decode_members, is_skip, skip_record
from harmonia.data.shard_urls import open_url
from harmonia.data.shards import open_shard
from harmonia.errors import DataError


class StreamingDataset(IterableDataset[dict[str, Any]]):
    """Iterates batches (batch_size given) or single items (batch_size=None) of some splits.

    Items are as for ShardDataset; batches as `collate` makes them. Call set_epoch(e) before each
    epoch to change the shard and sample order (like DistributedSampler).

    With ``urls`` (written by the user, e.g. `shard_urls.expand_urls` of ``data.train_shards``)
    those shards are read instead of the split's, and ``num_samples`` says how many samples they
    hold; ``root`` still gives the media spec. ``split`` is then not read.
    """

    def __init__(
        self,
        root: Path | str,
        split: str | Sequence[str] = "train",
        *,
        batch_size: int | None = None,
        shuffle: bool = True,
        buffer: int = 1000,
        seed: int = 0,
        urls: Sequence[str] | None = None,
        num_samples: int | None = None,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.spec = load_media_spec(self.root)
        self.from_urls = urls is not None
        """The shards are user-written URLs (opened by WebDataset), not the dataset's files."""
        self.shard_samples: dict[str, int] | None = None
        """Samples per shard, from the index (what each rank and worker will read); None for
        URLs, whose counts are not known before reading them."""
        if urls is not None:
            if num_samples is None or not urls:
                raise DataError("shard URLs need at least one URL and their number of samples")
            self.shards: list[str] = list(urls)
            self.num_samples = num_samples
        else:
            self.shards, self.num_samples, self.shard_samples = _split_shards(self.root, split)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.buffer = buffer
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_shards(self, epoch: int) -> list[str]:
        """The shard order of ``epoch`` (before the split between ranks and workers)."""
        urls = list(self.shards)  # the root's files or the user's URLs, as `_open` tells
        if self.shuffle:
            random.Random(self.seed + epoch).shuffle(urls)
        return urls

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, _, worker, _ = wds.utils.pytorch_worker_info()
        stages: list[Any] = [
            wds.SimpleShardList(self.epoch_shards(self.epoch), seed=None),
            wds.split_by_node,
            wds.split_by_worker,
            self._read_shards,
        ]
        if self.shuffle and self.buffer > 1:  # shuffles encoded samples (~12 kB each), not tensors
            rng = random.Random(f"{self.seed}/{self.epoch}/{rank}/{worker}")
            stages.append(wds.shuffle(self.buffer, initial=min(self.buffer, 100), rng=rng))
        stages.append(self._decode)
        if self.batch_size is not None:
            stages.append(self._batches)
        return iter(wds.DataPipeline(*stages))

    def _open(self, shard: str) -> AbstractContextManager[BinaryIO]:
        """A shard for reading: a user's URL by WebDataset (ShardUrlError when it cannot be
        opened or its command fails), a name from the dataset's own files as a plain file
        inside the root, never run or followed outside it."""
        return open_url(shard) if self.from_urls else open_shard(self.root, shard)

    def _read_shards(self, sources: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Group tar members by key: {"__key__", "__shard__", ext: bytes}; read errors -> skip records."""
        seen: set[str] = set()
        repeated: str | None = None  # the repeated key whose members are being passed over
        for source in sources:
            shard = source["url"]
            current: dict[str, Any] | None = None
            try:
                with (
                    self._open(shard) as stream,
                    tarfile.open(fileobj=stream, mode="r|") as tar,
                ):
                    for info in tar:
                        if not info.isreg():
                            continue
                        key, _, ext = info.name.partition(".")
                        if current is not None and current["__key__"] != key:
                            yield current
                            current = None
                        if current is None:
                            if key in seen:  # a key repeated later: trained twice per epoch
                                if key != repeated:
                                    yield skip_record(key, shard, "duplicate key in the shards")
                                    repeated = key
                                continue
                            seen.add(key)
                            current = {"__key__": key, "__shard__": shard}
                        member = tar.extractfile(info)
                        current[ext] = member.read() if member is not None else b""
                        if len(current[ext]) != info.size:
                            raise tarfile.ReadError(f"{info.name} truncated")
            except (tarfile.TarError, OSError, EOFError) as err:
                key = current["__key__"] if current is not None else "?"
                yield skip_record(key, shard, f"shard unreadable from here on ({err})")
                current = None
            if current is not None:
                yield current

    def _decode(self, groups: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for group in groups:
            if is_skip(group):
                yield group
                continue
            key, shard = group["__key__"], group["__shard__"]
            members = {k: v for k, v in group.items() if not k.startswith("__")}
            try:
                yield decode_members(key, members, self.spec)
            except CorruptSample as err:
                yield skip_record(key, shard, str(err))

    def _batches(self, items: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Batches of batch_size decoded samples, each with the skip records met while filling it."""
        assert self.batch_size is not None
        pending: list[dict[str, Any]] = []
        count = 0
        for item in items:
            pending.append(item)
            if not is_skip(item):
                count += 1
            if count == self.batch_size:
                yield collate(pending, self.spec)
                pending, count = [], 0
        if pending:
            yield collate(pending, self.spec)


def _split_shards(root: Path, split: str | Sequence[str]) -> tuple[list[str], int, dict[str, int]]:
    """The shards of some splits as the summary lists them, their samples, samples per shard."""
    summary = load_summary(root)
    splits = [split] if isinstance(split, str) else list(split)
    missing = [s for s in splits if s not in summary["splits"]]
    if missing:
        raise DataError(f"{root} has no split {missing[0]!r} (has {', '.join(summary['splits'])})")
    records = read_index(root, splits)
    shards = [s for name in splits for s in split_shards(root, name, records, summary)]
    counts = {name: 0 for name in shards}
    for record in records:
        counts[record["shard"]] = counts.get(record["shard"], 0) + 1
    return shards, sum(int(summary["splits"][name]["samples"]) for name in splits), counts


def make_stream_loader(
    root: Path | str,
    split: str | Sequence[str] = "train",
    *,
    batch_size: int,
    num_workers: int = 0,
    shuffle: bool = True,
    buffer: int = 1000,
    seed: int = 0,
) -> DataLoader[dict[str, Any]]:
    """A DataLoader over a StreamingDataset; batching happens inside the workers."""
    stream = StreamingDataset(
        root, split, batch_size=batch_size, shuffle=shuffle, buffer=buffer, seed=seed
    )
    return DataLoader(stream, batch_size=None, num_workers=num_workers)

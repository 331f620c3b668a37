"""Map-style and streaming loaders: same samples, worker processes, epochs, node splitting, collate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import WeightedRandomSampler

from harmonia.data import (
    MediaSpec,
    ShardDataset,
    StreamingDataset,
    collate,
    load_media_spec,
    make_loader,
    make_stream_loader,
    read_index,
)
from harmonia.errors import DataError

SPLITS = ["train", "val", "test"]
BATCH_KEYS = {"id", "video", "audio", "text", "skipped"}


def _check_batch(batch: dict, spec: MediaSpec) -> None:
    assert set(batch) == BATCH_KEYS
    b = len(batch["id"])
    assert batch["video"].shape == (b, spec.frames, spec.height, spec.width, 3)
    assert batch["video"].dtype == torch.uint8
    assert batch["audio"].shape == (b, spec.audio_samples) and batch["audio"].dtype == torch.float32
    assert len(batch["text"]) == b and all(len(t) == spec.captions_per_clip for t in batch["text"])


def test_map_style_with_workers_reads_every_sample_once(tiny_dataset: Path) -> None:
    spec = load_media_spec(tiny_dataset)
    ds = ShardDataset(tiny_dataset, SPLITS)
    assert ds.ids == [r["id"] for r in read_index(tiny_dataset)]
    seen = []
    for batch in make_loader(ds, 16, shuffle=True, num_workers=2, seed=1):
        _check_batch(batch, spec)
        assert batch["skipped"] == []
        seen += batch["id"]
    assert sorted(seen) == sorted(ds.ids)


def test_map_style_serves_a_weighted_sampler(tiny_dataset: Path) -> None:
    """Random access: a sampler may ask for any index, any number of times."""
    ds = ShardDataset(tiny_dataset, "train")
    weights = torch.zeros(len(ds))
    weights[[3, 7]] = 1.0
    sampler = WeightedRandomSampler(weights, num_samples=12, replacement=True)
    ids = [i for batch in make_loader(ds, 4, sampler=sampler, num_workers=2) for i in batch["id"]]
    assert len(ids) == 12 and set(ids) <= {ds.ids[3], ds.ids[7]}


def test_streaming_with_workers_yields_each_sample_once(tiny_dataset: Path) -> None:
    spec = load_media_spec(tiny_dataset)
    seen = []
    for batch in make_stream_loader(tiny_dataset, SPLITS, batch_size=8, num_workers=2, buffer=32):
        _check_batch(batch, spec)
        seen += batch["id"]
    assert sorted(seen) == sorted(r["id"] for r in read_index(tiny_dataset))


def test_both_loaders_decode_identically(tiny_dataset: Path) -> None:
    ds = ShardDataset(tiny_dataset, "val")
    stream = StreamingDataset(tiny_dataset, "val", shuffle=False)
    for item in stream:
        ref = ds[ds.index_of(item["id"])]
        assert torch.equal(item["video"], ref["video"]) and torch.equal(item["audio"], ref["audio"])
        assert item["text"] == ref["text"]


def _order(stream: StreamingDataset) -> list[str]:
    return [item["id"] for item in stream]


def test_streaming_order_depends_on_seed_and_epoch_only(tiny_dataset: Path) -> None:
    a = StreamingDataset(tiny_dataset, SPLITS, buffer=32, seed=5)
    b = StreamingDataset(tiny_dataset, SPLITS, buffer=32, seed=5)
    first = _order(a)
    assert first == _order(b)
    a.set_epoch(1)
    assert sorted(_order(a)) == sorted(first) and _order(a) != first
    plain = _order(StreamingDataset(tiny_dataset, SPLITS, shuffle=False))
    assert plain == [r["id"] for r in read_index(tiny_dataset)]


def test_streaming_splits_shards_between_nodes(
    tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torchrun's RANK/WORLD_SIZE: each node reads a disjoint share of the shards, together all."""
    parts = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        parts.append(set(_order(StreamingDataset(tiny_dataset, SPLITS, seed=0))))
    assert parts[0] and parts[1] and not parts[0] & parts[1]
    assert parts[0] | parts[1] == {r["id"] for r in read_index(tiny_dataset)}


def test_collate_pads_captions_by_repeating_and_passes_skips() -> None:
    spec = MediaSpec(frames=2, height=16, width=16, sample_rate=8000, fps=2, captions_per_clip=3)

    def sample(i: str, k: int) -> dict:
        return {
            "id": i,
            "video": torch.zeros(2, 16, 16, 3, dtype=torch.uint8),
            "audio": torch.zeros(spec.audio_samples),
            "text": [f"{i}-{j}" for j in range(k)],
        }

    skip = {"skipped": {"key": "bad", "shard": "s.tar", "reason": "r"}}
    batch = collate([sample("a", 3), skip, sample("b", 1)], spec)
    assert batch["id"] == ["a", "b"]
    assert batch["text"] == [["a-0", "a-1", "a-2"], ["b-0", "b-0", "b-0"]]
    assert batch["skipped"] == [skip["skipped"]]
    empty = collate([skip], spec)
    assert empty["id"] == [] and empty["video"].shape == (0, 2, 16, 16, 3)
    assert empty["audio"].shape == (0, spec.audio_samples) and empty["skipped"] == [skip["skipped"]]


def test_loaders_refuse_unknown_splits_and_non_datasets(tiny_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no split 'extra'"):
        StreamingDataset(tiny_dataset, "extra")
    with pytest.raises(DataError, match="no samples in split"):
        ShardDataset(tiny_dataset, "extra")
    with pytest.raises(DataError, match=r"summary\.json not found"):
        ShardDataset(tmp_path, "train")

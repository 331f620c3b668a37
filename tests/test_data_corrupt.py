"""Corrupt samples are skipped, counted and named by both loaders, never a crash."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from harmonia.data import ShardDataset, load_media_spec, make_loader, make_stream_loader, read_index
from harmonia.data.index import INDEX_FILE, write_index
from harmonia.data.media import encode_mp4
from harmonia.data.shards import write_shard

SHARD = "shards/train-000000.tar"
VICTIM = "train-000005"


def _rewrite(root: Path, change: Callable[[str, dict[str, bytes]], dict[str, bytes]]) -> None:
    """Rewrite the first train shard with changed members and point the index at the new bytes."""
    records = read_index(root)
    samples = []
    with (root / SHARD).open("rb") as fh:
        for r in records:
            if r["shard"] != SHARD:
                continue
            members = {}
            for ext, m in r["members"].items():
                fh.seek(m["offset"])
                members[ext] = fh.read(m["size"])
            samples.append((r["id"], list(change(r["id"], members).items())))
    located = write_shard(root / SHARD, samples)
    for r in records:
        if r["shard"] == SHARD:
            r["members"] = located[r["id"]]
    write_index(root / INDEX_FILE, records)


def _replace_member(
    ext: str, data: bytes | None
) -> Callable[[str, dict[str, bytes]], dict[str, bytes]]:
    def change(key: str, members: dict[str, bytes]) -> dict[str, bytes]:
        if key != VICTIM:
            return members
        out = dict(members)
        if data is None:
            del out[ext]
        else:
            out[ext] = data
        return out

    return change


def _mp4_without_audio(root: Path) -> bytes:
    spec = load_media_spec(root)
    return encode_mp4(np.zeros((spec.frames, spec.height, spec.width, 3), np.uint8), None, spec)


def _mp4_with_frames(root: Path, frames: int) -> bytes:
    spec = load_media_spec(root)
    return encode_mp4(
        np.zeros((frames, spec.height, spec.width, 3), np.uint8),
        np.zeros(spec.audio_samples, np.float32),
        spec,
    )


def _truncate_mp4(key: str, members: dict[str, bytes]) -> dict[str, bytes]:
    return (
        {**members, "mp4": members["mp4"][: len(members["mp4"]) // 2]} if key == VICTIM else members
    )


KINDS = {
    "garbage mp4": (
        lambda root: _rewrite(root, _replace_member("mp4", bytes(range(256)) * 40)),
        "not a readable mp4",
    ),
    "truncated mp4": (lambda root: _rewrite(root, _truncate_mp4), "mp4:"),
    "no audio stream": (
        lambda root: _rewrite(root, _replace_member("mp4", _mp4_without_audio(root))),
        "no audio stream",
    ),
    "wrong frame count": (
        lambda root: _rewrite(root, _replace_member("mp4", _mp4_with_frames(root, 5))),
        "5 frames",
    ),
    "bad json": (
        lambda root: _rewrite(root, _replace_member("json", b"{not json")),
        "not valid JSON",
    ),
    "json without captions": (
        lambda root: _rewrite(root, _replace_member("json", json.dumps({"id": VICTIM}).encode())),
        "caption",
    ),
    "missing mp4 member": (
        lambda root: _rewrite(root, _replace_member("mp4", None)),
        "missing mp4",
    ),
}


@pytest.fixture
def copy_of(tiny_dataset: Path, tmp_path: Path) -> Path:
    out = tmp_path / "ds"
    shutil.copytree(tiny_dataset, out)
    return out


def _stream_all(root: Path, workers: int) -> tuple[list[str], list[dict]]:
    ids: list[str] = []
    skipped: list[dict] = []
    for batch in make_stream_loader(root, "train", batch_size=8, num_workers=workers, buffer=16):
        assert (
            len(batch["id"])
            == batch["video"].shape[0]
            == batch["audio"].shape[0]
            == len(batch["text"])
        )
        ids += batch["id"]
        skipped += batch["skipped"]
    return ids, skipped


def _map_all(root: Path, workers: int) -> tuple[list[str], list[dict]]:
    ids: list[str] = []
    skipped: list[dict] = []
    for batch in make_loader(ShardDataset(root, "train"), 8, num_workers=workers):
        ids += batch["id"]
        skipped += batch["skipped"]
    return ids, skipped


@pytest.mark.parametrize("kind", list(KINDS))
def test_corrupt_sample_is_skipped_and_named(kind: str, copy_of: Path) -> None:
    corrupt, reason = KINDS[kind]
    everyone = [r["id"] for r in read_index(copy_of, "train")]
    corrupt(copy_of)
    ds = ShardDataset(copy_of, "train")
    item = ds[ds.index_of(VICTIM)]
    assert item == {"skipped": {"key": VICTIM, "shard": SHARD, "reason": item["skipped"]["reason"]}}
    assert reason in item["skipped"]["reason"], item
    for loader in (_map_all, _stream_all):
        ids, skipped = loader(copy_of, 2 if kind == "bad json" else 0)
        assert sorted(ids) == sorted(set(everyone) - {VICTIM}), loader.__name__
        assert len(skipped) == 1 and skipped[0]["key"] == VICTIM and skipped[0]["shard"] == SHARD
        assert reason in skipped[0]["reason"]


def test_truncated_shard(copy_of: Path) -> None:
    """A shard cut in the middle of a member: every sample before the cut still loads."""
    records = read_index(copy_of, "train")
    last = records[-1]
    cut = last["members"]["mp4"]["offset"] + last["members"]["mp4"]["size"] // 2
    with (copy_of / SHARD).open("r+b") as fh:
        fh.truncate(cut)
    ds = ShardDataset(copy_of, "train")
    item = ds[len(ds) - 1]
    assert item["skipped"]["key"] == last["id"] and "truncated" in item["skipped"]["reason"]
    for loader in (_map_all, _stream_all):
        ids, skipped = loader(copy_of, 2)
        assert sorted(ids) == sorted(r["id"] for r in records[:-1]), loader.__name__
        assert [s["key"] for s in skipped] == [last["id"]]
        assert skipped[0]["shard"] == SHARD


def test_altered_bytes_are_caught_by_the_index_hash(copy_of: Path) -> None:
    """A flipped byte that still decodes is caught by the SHA-256 check of the map-style reader."""
    record = next(r for r in read_index(copy_of, "train") if r["id"] == VICTIM)
    member = record["members"]["json"]
    with (copy_of / SHARD).open("r+b") as fh:
        fh.seek(member["offset"])
        text = fh.read(member["size"])
        fh.seek(member["offset"] + text.index(b'"captions": ["') + len(b'"captions": ["'))
        fh.write(b"X")  # one caption letter changed: still valid JSON
    ds = ShardDataset(copy_of, "train")
    assert "SHA-256" in ds[ds.index_of(VICTIM)]["skipped"]["reason"]
    unchecked = ShardDataset(copy_of, "train", verify=False)
    assert "skipped" not in unchecked[unchecked.index_of(VICTIM)]


def test_missing_shard_file_is_reported_per_sample(copy_of: Path) -> None:
    (copy_of / SHARD).unlink()
    ds = ShardDataset(copy_of, "train")
    assert "cannot read shard" in ds[0]["skipped"]["reason"]
    ids, skipped = _stream_all(copy_of, 0)
    assert ids == [] and len(skipped) == 1 and skipped[0]["shard"] == SHARD

"""Copies of a built dataset with its index records edited or some members replaced, the
summary's content checksum recomputed so that the copy passes its own verification."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from harmonia.data.index import content_checksum, load_media_spec, read_index, write_index
from harmonia.data.shards import read_member, write_shard


def rewrite_index(dataset: Path, out: Path, edit: Callable[[list[dict[str, Any]]], None]) -> Path:
    """A copy of ``dataset`` whose index records ``edit`` changed, checksum recomputed."""
    shutil.copytree(dataset, out)
    records = read_index(out)
    edit(records)
    return rewrite_records(out, records)


def replace_members(
    dataset: Path, out: Path, replacements: Mapping[str, Mapping[str, bytes]]
) -> Path:
    """A copy of ``dataset`` with members replaced (sample id -> {ext: bytes}); the shards that
    hold them are re-written."""
    shutil.copytree(dataset, out)
    records = read_index(out)
    shards = dict.fromkeys(r["shard"] for r in records if r["id"] in replacements)
    for shard in shards:
        same = [r for r in records if r["shard"] == shard]
        samples = []
        with (dataset / shard).open("rb") as fh:
            for r in same:
                members = {
                    e: read_member(fh, m["offset"], m["size"]) for e, m in r["members"].items()
                }
                members.update(replacements.get(r["id"], {}))
                samples.append((r["id"], sorted(members.items())))
        written = write_shard(out / shard, samples)
        for r in same:
            r["members"] = written[r["id"]]
    return rewrite_records(out, records)


def rewrite_records(out: Path, records: list[dict[str, Any]]) -> Path:
    """Write ``records`` as ``out``'s index and recompute its checksum."""
    write_index(out / "index.jsonl", records)
    summary = json.loads((out / "summary.json").read_text())
    summary["checksum"] = content_checksum(records, load_media_spec(out))
    (out / "summary.json").write_text(json.dumps(summary))
    return out

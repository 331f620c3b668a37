"""Check a built dataset against its own index: every member's bytes and the content checksum."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO

from harmonia.data.index import (
    content_checksum,
    load_media_spec,
    load_summary,
    read_index,
    split_shards,
)
from harmonia.data.shards import TruncatedMember, open_shard, read_member
from harmonia.errors import DataError


def verify_dataset(root: Path | str) -> list[str]:
    """One line per problem (missing shard, truncated or altered member, checksum mismatch)."""
    root = Path(root)
    summary = load_summary(root)
    records = read_index(root)
    problems = []
    if content_checksum(records, load_media_spec(root)) != summary["checksum"]:
        problems.append("index.jsonl does not match the checksum in summary.json")
    for split in summary["splits"]:
        try:
            split_shards(root, split, records, summary)
        except DataError as err:
            problems.append(str(err))
    handles: dict[str, BinaryIO | None] = {}
    try:
        for record in records:
            shard = record["shard"]
            if shard not in handles:
                try:
                    handles[shard] = open_shard(root, shard)
                except FileNotFoundError:
                    problems.append(f"{shard}: missing")
                    handles[shard] = None
                except OSError as err:
                    problems.append(f"{shard}: {err.strerror or err}")
                    handles[shard] = None
            fh = handles[shard]
            if fh is None:
                continue
            for ext, member in record["members"].items():
                try:
                    data = read_member(fh, member["offset"], member["size"])
                except TruncatedMember as err:
                    problems.append(f"{shard}: {record['id']}.{ext}: {err}")
                    continue
                if hashlib.sha256(data).hexdigest() != member["sha256"]:
                    problems.append(
                        f"{shard}: {record['id']}.{ext}: SHA-256 differs from the index"
                    )
    finally:
        for fh in handles.values():
            if fh is not None:
                fh.close()
    return problems

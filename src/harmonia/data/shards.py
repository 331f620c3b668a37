"""WebDataset tar shards: write samples with deterministic headers; read one member by byte offset."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

SHARD_FOLDER = "shards"


class TruncatedMember(Exception):
    """A tar member ends before its recorded size."""


def shard_name(split: str, number: int) -> str:
    """Relative path of a split's shard, e.g. shards/train-000003.tar."""
    return f"{SHARD_FOLDER}/{split}-{number:06d}.tar"


def write_shard(
    path: Path, samples: Sequence[tuple[str, Sequence[tuple[str, bytes]]]]
) -> dict[str, dict[str, dict[str, int | str]]]:
    """Write (key, [(extension, bytes), ...]) samples as `{key}.{extension}` members.

    Returns key -> extension -> {"offset", "size", "sha256"}: where each member's bytes start in
    the file, for random access without reading the tar sequentially.
    """
    hashes: dict[str, str] = {}
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            for ext, data in members:
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                info.mtime = 0
                info.mode = 0o644
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
                hashes[info.name] = hashlib.sha256(data).hexdigest()
    out: dict[str, dict[str, dict[str, int | str]]] = {}
    with tarfile.open(path, "r") as tar:
        for info in tar.getmembers():
            key, ext = info.name.split(".", 1)
            out.setdefault(key, {})[ext] = {
                "offset": info.offset_data,
                "size": info.size,
                "sha256": hashes[info.name],
            }
    return out


def read_member(fh: BinaryIO, offset: int, size: int) -> bytes:
    """The `size` bytes at `offset` of an open shard; TruncatedMember if the file ends early."""
    fh.seek(offset)
    data = fh.read(size)
    if len(data) != size:
        raise TruncatedMember(f"tar member truncated ({len(data)} of {size} bytes)")
    return data

"""WebDataset tar shards: write samples with deterministic headers; read one member by byte offset."""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import tarfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import BinaryIO

SHARD_FOLDER = "shards"


class TruncatedMember(Exception):
    """A tar member ends before its recorded size, or lies outside its shard."""


class ShardRefused(OSError):
    """A shard name from an index or summary that does not name a plain file inside the dataset."""


def shard_path(root: Path, name: object) -> Path:
    """The file of shard ``name`` (as an index or summary records it) inside the dataset ``root``.

    The name must be a relative path without ``..``: never absolute, never a URL or ``pipe:``
    command (it is only ever opened as a local file, see `open_shard`).
    """
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        raise ShardRefused(f"shard name {name!r} is not a relative path")
    parts = PurePosixPath(name).parts
    if PurePosixPath(name).is_absolute() or ".." in parts:
        raise ShardRefused(f"shard name {name!r} points outside the dataset")
    return root / name


def open_shard(root: Path, name: object) -> BinaryIO:
    """Open shard ``name`` of ``root`` for reading; ShardRefused unless it is a regular file.

    Opened non-blocking first, so a FIFO in its place cannot hang the reader; devices
    (``/dev/zero``), directories and sockets are refused the same way.
    """
    path = shard_path(root, name)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ShardRefused(f"shard {name} is not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def expand_braces(pattern: str) -> list[str]:
    """``a{00..02}b`` -> a00b, a01b, a02b; ``{x,y}`` -> x, y (nested and repeated)."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    head, body, tail = pattern[: match.start()], match.group(1), pattern[match.end() :]
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric:
        lo, hi = numeric.group(1), numeric.group(2)
        width = len(lo) if lo.startswith("0") else 0
        choices = [str(n).zfill(width) for n in range(int(lo), int(hi) + 1)]
    else:
        choices = body.split(",")
    return [name for choice in choices for name in expand_braces(head + choice + tail)]


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
    """The `size` bytes at `offset` of an open shard; TruncatedMember if the file ends early.

    The range is checked against the file's size first, so a lying index costs nothing.
    """
    end = fh.seek(0, io.SEEK_END)
    if offset < 0 or size < 0 or offset + size > end:
        raise TruncatedMember(
            f"tar member truncated or outside the shard (bytes {offset}+{size} of {end})"
        )
    fh.seek(offset)
    data = fh.read(size)
    if len(data) != size:
        raise TruncatedMember(f"tar member truncated ({len(data)} of {size} bytes)")
    return data

"""Shard URLs a user writes (``data.train_shards``): expanded like open_clip's, opened by WebDataset.

A value is one or more patterns joined by ``::``; each is brace-expanded
(``/big/train-{000000..000099}.tar``), and a local pattern with glob characters (``*?[``)
matches files, in sorted order. WebDataset opens the URLs: local paths, ``file:`` URLs and
``pipe:`` commands (``pipe:aws s3 cp s3://bucket/train-000001.tar -``), which run in a shell.

Only URLs written by the user come here. Shard names read from a dataset's own index or summary
are never opened this way: they are plain files inside the dataset (`shards.open_shard`).
"""

from __future__ import annotations

import glob
import os
import signal
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from subprocess import Popen, TimeoutExpired
from typing import BinaryIO
from urllib.parse import urlparse

import webdataset as wds

from harmonia.data.shards import expand_braces
from harmonia.errors import DataError

SEPARATOR = "::"
"""Between the patterns of one value, as in open_clip's ``--train-data``."""

_FINE = (0, 141, -signal.SIGPIPE)
"""Exit statuses of a ``pipe:`` command that are not failures (141, -13: stopped by SIGPIPE
because the reader closed the pipe)."""


class ShardUrlError(DataError):
    """A user-written shard URL matches nothing, cannot be opened, or its command failed."""


def is_local(url: str) -> bool:
    """A plain path (no scheme, not ``-``): what a glob and the existence check apply to."""
    return url != "-" and urlparse(url).scheme == ""


def expand_urls(value: str) -> list[str]:
    """The shard URLs of ``value``: ``::``-separated patterns, braces expanded, globs matched.

    ShardUrlError for an empty pattern, a glob that matches no file or a local path that is
    not a file (``pipe:`` commands and other schemes are only tried when opened).
    """
    urls: list[str] = []
    for pattern in value.split(SEPARATOR):
        pattern = pattern.strip()
        if not pattern:
            raise ShardUrlError(f"{value!r}: empty pattern between '{SEPARATOR}' separators")
        for url in expand_braces(pattern):
            if not is_local(url):
                urls.append(url)
            elif glob.has_magic(url):
                matched = sorted(glob.glob(url))
                if not matched:
                    raise ShardUrlError(f"shard pattern {url!r} matches no file")
                urls += matched
            elif not os.path.isfile(url):
                raise ShardUrlError(f"shard {url!r} is not a file (pattern {pattern!r})")
            else:
                urls.append(url)
    return urls


@contextmanager
def open_url(url: str) -> Iterator[BinaryIO]:
    """``url`` opened for reading by WebDataset (a ``pipe:`` command runs).

    ShardUrlError naming the URL when it cannot be opened or its command exits with a failure
    status; errors reading the bytes themselves (a corrupt tar) propagate as they are. A pipe
    left early (the epoch ended) is killed, not waited for.
    """
    try:
        stream = wds.gopen(url, "rb")
    except ValueError as err:  # a scheme WebDataset has no reader for, e.g. s3://
        raise ShardUrlError(
            f"cannot open shard {url}: {err} (for object stores write a pipe: command, e.g. "
            "pipe:aws s3 cp s3://bucket/train-000000.tar -)"
        ) from None
    except OSError as err:
        raise ShardUrlError(f"cannot open shard {url}: {err}") from None
    process: Popen[bytes] | None = getattr(stream, "proc", None)  # a pipe: command
    try:
        yield stream
    except (tarfile.TarError, OSError, EOFError):
        # a command that failed often shows first as an empty or cut stream: say which it was
        if process is not None and _exit_status(stream, process) not in _FINE:
            raise ShardUrlError(_failed(url, process)) from None
        raise
    except BaseException:  # left early (GeneratorExit) or the reader failed
        if process is not None:
            process.kill()
        raise
    else:
        if process is not None and _exit_status(stream, process) not in _FINE:
            raise ShardUrlError(_failed(url, process))
    finally:
        _close(stream, process)


def _exit_status(stream: BinaryIO, process: Popen[bytes]) -> int:
    """Close our end of the pipe and wait for the command (killed after 60 s)."""
    _close_quietly(getattr(stream, "stream", stream))
    try:
        return process.wait(timeout=60)
    except TimeoutExpired:
        process.kill()
        return process.wait()


def _failed(url: str, process: Popen[bytes]) -> str:
    return f"shard {url}: the command exited with status {process.returncode}"


def _close(stream: BinaryIO, process: Popen[bytes] | None) -> None:
    if process is None:
        _close_quietly(stream)
        return
    _close_quietly(getattr(stream, "stream", stream))  # so the Pipe wrapper's close is a no-op
    if process.poll() is None:
        process.kill()
    process.wait()


def _close_quietly(stream: BinaryIO) -> None:
    with suppress(OSError):
        stream.close()

"""Errors caused by what the user gave us (configs, paths, data).

The CLI prints them as one line and exits with code 2, without a traceback; anything
else escaping is a bug in harmonia and keeps its traceback.
"""

from __future__ import annotations


def first_line(err: BaseException, default: str | None = None) -> str:
    """The first line of ``err``'s message (for one-line reports); ``default``, or the
    exception's type name, when the message is empty."""
    text = str(err).strip()
    if text:
        return text.splitlines()[0]
    return type(err).__name__ if default is None else default


class HarmoniaError(Exception):
    """Base class for user-facing errors: the message alone must say what is wrong and where."""

    exit_code: int = 2


class ConfigError(HarmoniaError):
    """A config field is missing, unknown, or has an invalid value."""


class DataError(HarmoniaError):
    """Source data or a built dataset is missing or unreadable."""


class CheckpointError(HarmoniaError):
    """A checkpoint or model directory is missing, tampered with, or does not match."""


class DistributedError(HarmoniaError):
    """Another process of a distributed run failed or stopped answering (exit code 1)."""

    exit_code = 1


class OutputError(HarmoniaError, OSError):
    """An output file cannot be written: the disk is full or read-only, or the path exists and is
    not a regular file (a symlink, FIFO, device or directory is never replaced).

    Also an OSError (same arguments), so code that reports failed writes keeps catching it.
    """

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"

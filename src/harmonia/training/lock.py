"""One process owns a run directory at a time: an advisory lock on ``RUN/.lock``.

The lock is an ``flock`` on the file, so the kernel drops it when its owner dies, however it
dies; the file also names the owner (pid and host) while it is held, which is what a second
process reports. An owner that died without releasing leaves its name behind, and the next
process says that it takes the lock over.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harmonia.errors import HarmoniaError
from harmonia.training.layout import LOCK_FILE


class RunInUse(HarmoniaError):
    """Another process holds the run directory's lock."""


@contextmanager
def run_lock(run_dir: Path, *, enabled: bool = True, echo: bool = True) -> Iterator[None]:
    """Hold ``run_dir``'s lock (creating the directory) for the duration of the block."""
    if not enabled:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)  # an OSError here is reported like any write's
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _owner(fd) or "another process"
            raise RunInUse(
                f"{run_dir} is in use by {owner} ({run_dir / LOCK_FILE}); wait for it to finish "
                "or stop it first"
            ) from None
        stale = _owner(fd)
        if stale and echo:
            print(f"{run_dir}: taking over the lock of {stale}, which ended without releasing it")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # released cleanly: nothing stale for the next owner to report
    finally:
        os.close(fd)  # closing drops the flock


def _owner(fd: int) -> str:
    """Who the lock file names (empty when nobody does)."""
    try:
        return os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""

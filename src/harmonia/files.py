"""Writing a file so that a kill or a full disk never leaves it half-written, reading JSON
that someone else may have written, and following a path someone else named only as far as a
folder.

Every output file of harmonia goes through `atomic_path` (or `write_atomic`): written under a
fresh hidden name beside it, then renamed over it; the temporary file is removed whatever fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harmonia.errors import OutputError

_NOT_REGULAR = (
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def refuse_special(path: str | Path) -> None:
    """Raise OutputError when ``path`` exists and is not a regular file (a link is not followed)."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:  # absent (or its folder is): the write itself reports what is wrong
        return
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _NOT_REGULAR if test(mode)), "not a regular file")
        raise OutputError(
            None, f"it is {kind}; refusing to replace it with a regular file", str(path)
        )


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A new hidden file beside ``path`` to write in the block; renamed over ``path`` at its end.

    The folder is created if needed. If the block fails the temporary file is deleted and
    ``path`` is left as it was. An existing ``path`` that is not a regular file, and every OS
    error (full or read-only disk), raise OutputError naming ``path``.
    """
    path = Path(path)
    refuse_special(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _reserve(path)
        yield tmp
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, OutputError):
            raise OutputError(err.errno, err.strerror or str(err), str(path)) from err
        raise


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` (str as UTF-8) to ``path`` through `atomic_path`: a kill leaves the
    previous file whole."""
    with atomic_path(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")


def parse_json(data: str | bytes) -> Any:
    """``json.loads``, with nesting too deep for the parser raised as ValueError, like every
    other malformed document (bad syntax, invalid UTF-8, integers of too many digits)."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def inside(root: Path, name: str) -> Path | None:
    """``root / name`` with ``..`` and symbolic links resolved, or None unless that stays inside
    ``root`` (a resolved folder): an absolute path, ``..`` or a link that leads out of it, a
    symlink loop and a name that cannot be a path (a NUL byte) are refused, never followed."""
    try:
        path = (root / name).resolve()
    except (OSError, RuntimeError, ValueError):  # RuntimeError: a loop, before Python 3.13
        return None
    return path if path.is_relative_to(root) else None


def _reserve(path: Path) -> Path:
    """Create ``.NAME.XXXXXXXX.tmp`` beside ``path`` (a name no other writer holds)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp

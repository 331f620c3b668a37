"""Write a dataset atomically: into a work directory beside it, renamed into place at the end.

`harmonia data build` and `harmonia data import` share this, so an interrupted or failed run
never leaves half a dataset, an existing dataset is replaced only once the new one is complete,
and a directory that is not a dataset is never overwritten.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harmonia.data.index import SUMMARY_FILE
from harmonia.data.shards import SHARD_FOLDER
from harmonia.errors import DataError


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse an existing output unless overwrite; never overwrite something that is not a dataset."""
    if out.exists() and not overwrite:
        raise DataError(f"output {out} already exists (pass --overwrite to replace it)")
    if out.exists() and not (out / SUMMARY_FILE).is_file() and any(out.iterdir()):
        raise DataError(
            f"refusing to overwrite {out}: it is not empty and not an AV-MNIST-T dataset"
        )


@contextmanager
def staged_dataset(out: Path, overwrite: bool) -> Iterator[Path]:
    """A fresh work directory (with its shard folder) that becomes ``out`` if the block succeeds.

    A disk error (read-only, full, ``out`` below a file) is a DataError saying nothing was
    written; work directories of killed runs are removed first.
    """
    check_output(out, overwrite)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_killed_runs(out)
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / SHARD_FOLDER).mkdir(parents=True)
        yield tmp
        _replace(tmp, out)
    except OSError as err:
        where = f": {err.filename}" if err.filename else ""
        raise DataError(
            f"cannot write the dataset {out} ({err.strerror or err}{where}); nothing was written"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_killed_runs(out: Path) -> None:
    """Delete the work directories that killed runs for ``out`` left (their process is gone)."""
    prefix = f".{out.name}.tmp-"
    for stale in out.parent.iterdir():
        pid = stale.name[len(prefix) :]
        if stale.name.startswith(prefix) and pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _replace(tmp: Path, out: Path) -> None:
    """Rename tmp to out; an existing out is moved aside first and deleted only afterwards."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

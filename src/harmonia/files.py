"""Writing a file so that a kill or a full disk never leaves it half-written."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` to ``.NAME.tmp`` beside ``path``, then rename it over ``path``.

    A kill while writing leaves the previous file whole; str is written as UTF-8.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    if isinstance(data, bytes):
        tmp.write_bytes(data)
    else:
        tmp.write_text(data, encoding="utf-8")
    os.replace(tmp, path)

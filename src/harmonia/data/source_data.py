"""What a source of media holds: digit images with labels and spoken-digit recordings.

`sources.py` reads them from disk (MNIST + FSDD) and `builtin.py` makes the fallback set; the
dataset builder reads only these types.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Recording:
    """One spoken-digit recording; `name` is its file name (unique within a source)."""

    digit: int
    speaker: str
    name: str


@dataclass
class SourceData:
    """Images [N, 28, 28] uint8 with digit labels, and recordings of spoken digits."""

    kind: str  # "files" or "builtin"
    root: Path | None
    images: np.ndarray
    labels: np.ndarray
    recordings: list[Recording]
    load_waveform: Callable[[Recording], tuple[np.ndarray, int]] = field(repr=False)
    description: dict[str, object] = field(default_factory=dict)

    @property
    def speakers(self) -> list[str]:
        return sorted({r.speaker for r in self.recordings})

"""Ground truth for evaluation, joined by sample id from a dataset's index.jsonl.

The loader never yields labels or misalignment flags; they live only in the index, and only
evaluation and reports read them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

TEXT_FLAG = "misaligned_text"
AUDIO_FLAG = "misaligned_audio"
NOISE_FLAGS: tuple[str, ...] = (TEXT_FLAG, AUDIO_FLAG)
"""Index fields marking a triplet whose caption / audio was drawn from another digit."""


def noise_flag(record: Mapping[str, Any], flags: tuple[str, ...] = NOISE_FLAGS) -> bool | None:
    """True if any of `flags` is set, False if all are present and unset, None if none is recorded."""
    present = [bool(record[f]) for f in flags if f in record and record[f] is not None]
    if not present:
        return None
    return any(present)

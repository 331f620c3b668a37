"""Ground truth for evaluation, joined by sample id from a dataset's index.jsonl.

The loader never yields labels or misalignment flags; they live only in the index, and only
evaluation and reports read them. A dataset imported from a user's own videos has none of them
(only ids, splits, members and metadata such as ``source``/``start``/``end``): what needs a label
asks here whether it is there, and the caller skips itself with the reason these helpers give.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

TEXT_FLAG = "misaligned_text"
AUDIO_FLAG = "misaligned_audio"
NOISE_FLAGS: tuple[str, ...] = (TEXT_FLAG, AUDIO_FLAG)
"""Index fields marking a triplet whose caption / audio was drawn from another digit."""
CLASS_LABELS: tuple[str, ...] = (
    "digit",
    "motion",
    "speaker",
    "audio_digit",
    "caption_digit",
    "caption_motion",
)
"""Index fields naming what a clip (or one of its modalities) shows."""
NO_LABELS = "the dataset has no labels"
"""The reason for every skipped metric of a dataset whose index records no ground truth."""


def noise_flag(record: Mapping[str, Any], flags: tuple[str, ...] = NOISE_FLAGS) -> bool | None:
    """True if any of `flags` is set, False if all are present and unset, None if none is recorded."""
    present = [bool(record[f]) for f in flags if f in record and record[f] is not None]
    if not present:
        return None
    return any(present)


def label_of(record: Mapping[str, Any], key: str, fallback: str | None = None) -> Any:
    """``record[key]``, else ``record[fallback]`` (a modality's own label, else the clip's);
    None when neither is recorded."""
    value = record.get(key)
    return record.get(fallback) if value is None and fallback is not None else value


def has_ground_truth(records: Iterable[Mapping[str, Any]]) -> bool:
    """Whether any record holds a class label or a misalignment flag."""
    keys = (*CLASS_LABELS, *NOISE_FLAGS)
    return any(record.get(k) is not None for record in records for k in keys)


def missing_label(
    records: Sequence[Mapping[str, Any]], key: str, fallback: str | None = None, *, where: str
) -> str | None:
    """None when every record has the label (`label_of`); else why a metric needing it is
    skipped. ``where`` names the records ("'test'"); the reason names the label all of them
    must have (the fallback when there is one)."""
    lacking = sum(label_of(r, key, fallback) is None for r in records)
    if not lacking:
        return None
    name = fallback or key
    if lacking == len(records):
        return f"no '{name}' label on the samples of {where}"
    return f"no '{name}' label on {lacking} of the {len(records)} samples of {where}"

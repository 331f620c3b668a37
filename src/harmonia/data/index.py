"""The dataset's index (index.jsonl: one record per sample, with labels) and summary (summary.json).

Labels live only here; training code reads shards and ids, evaluation joins labels by id.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from harmonia.data.spec import MediaSpec
from harmonia.errors import DataError

INDEX_FILE = "index.jsonl"
SUMMARY_FILE = "summary.json"
FORMAT = "av-mnist-t"
FORMAT_VERSION = 1


def canonical(record: dict[str, Any]) -> str:
    """One JSON line with sorted keys: the form that is written and hashed."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"))


def content_checksum(records: Iterable[dict[str, Any]], media: MediaSpec) -> str:
    """SHA-256 over the media spec and every index record (which hold each member's SHA-256)."""
    h = hashlib.sha256()
    h.update(canonical(media.to_dict()).encode())
    for record in records:
        h.update(b"\n")
        h.update(canonical(record).encode())
    return h.hexdigest()


def write_index(path: Path, records: Iterable[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for record in records:
            fh.write(canonical(record) + "\n")


def read_index(root: Path | str, splits: Sequence[str] | str | None = None) -> list[dict[str, Any]]:
    """All index records (optionally of some splits), in shard order."""
    path = Path(root) / INDEX_FILE
    if not path.is_file():
        raise DataError(f"{path} not found: is {root} an AV-MNIST-T dataset (harmonia data build)?")
    wanted = {splits} if isinstance(splits, str) else (set(splits) if splits is not None else None)
    records = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise DataError(f"{path}:{number} is not valid JSON") from None
            if wanted is None or record.get("split") in wanted:
                records.append(record)
    return records


def load_summary(root: Path | str) -> dict[str, Any]:
    """summary.json of a built dataset (DataError if missing or not this format)."""
    path = Path(root) / SUMMARY_FILE
    if not path.is_file():
        raise DataError(f"{path} not found: is {root} an AV-MNIST-T dataset (harmonia data build)?")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"{path} is not valid JSON") from None
    if not isinstance(summary, dict) or summary.get("format") != FORMAT:
        raise DataError(f"{path} does not describe an {FORMAT} dataset")
    return summary


def load_media_spec(root: Path | str) -> MediaSpec:
    """The media spec a dataset was built with."""
    return MediaSpec.from_dict(load_summary(root)["media"])


def load_labels(
    root: Path | str, splits: Sequence[str] | str | None = None
) -> dict[str, dict[str, Any]]:
    """Ground truth by sample id (digit, motion, speaker, misalignment flags...): for evaluation only."""
    keep = (
        "split",
        "source",
        "digit",
        "motion",
        "speaker",
        "image_index",
        "audio_file",
        "audio_digit",
        "caption_digit",
        "caption_motion",
        "misaligned_text",
        "misaligned_audio",
    )
    return {r["id"]: {k: r[k] for k in keep if k in r} for r in read_index(root, splits)}


def split_names(root: Path | str) -> list[str]:
    """Splits present in a dataset, in build order."""
    return list(load_summary(root)["splits"])

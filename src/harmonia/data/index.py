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
from harmonia.files import parse_json

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
    seen: set[str] = set()
    try:
        with path.open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                try:
                    record = parse_json(line)
                except ValueError:
                    raise DataError(f"{path}:{number} is not valid JSON") from None
                problem = _record_problem(record)
                if problem is None and record["id"] in seen:
                    problem = f"sample id {record['id']!r} appears twice"
                if problem is not None:
                    raise DataError(f"{path}:{number}: {problem}")
                seen.add(record["id"])
                if wanted is None or record.get("split") in wanted:
                    records.append(record)
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text") from None
    return records


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _record_problem(record: Any) -> str | None:
    """What makes an index record unusable (wrong types, lying offsets), or None."""
    if not isinstance(record, dict):
        return "not a JSON object"
    for key in ("id", "split", "shard"):
        if not isinstance(record.get(key), str) or not record[key]:
            return f"'{key}' must be a non-empty string"
    members = record.get("members")
    if not isinstance(members, dict) or not members:
        return "'members' must be an object of members"
    for ext, member in members.items():
        if not isinstance(member, dict):
            return f"member {ext!r} must be an object"
        if not (_is_count(member.get("offset")) and _is_count(member.get("size"))):
            return f"member {ext!r}: 'offset' and 'size' must be non-negative integers"
        if not isinstance(member.get("sha256"), str):
            return f"member {ext!r}: 'sha256' must be a string"
    return None


def load_summary(root: Path | str) -> dict[str, Any]:
    """summary.json of a built dataset (DataError if missing or not this format)."""
    path = Path(root) / SUMMARY_FILE
    if not path.is_file():
        raise DataError(f"{path} not found: is {root} an AV-MNIST-T dataset (harmonia data build)?")
    try:
        summary = parse_json(path.read_bytes())
    except ValueError:
        raise DataError(f"{path} is not valid JSON") from None
    if not isinstance(summary, dict) or summary.get("format") != FORMAT:
        raise DataError(f"{path} does not describe an {FORMAT} dataset")
    splits = summary.get("splits")
    if not isinstance(splits, dict) or not all(
        isinstance(v, dict)
        and _is_count(v.get("samples"))
        and isinstance(v.get("shards"), list)
        and all(isinstance(n, str) for n in v["shards"])
        for v in splits.values()
    ):
        raise DataError(f"{path}: 'splits' must map each split to its samples and shard list")
    if not isinstance(summary.get("media"), dict) or not isinstance(summary.get("checksum"), str):
        raise DataError(f"{path}: 'media' (an object) and 'checksum' (a string) are required")
    return summary


def split_shards(
    root: Path | str,
    split: str,
    records: Sequence[dict[str, Any]] | None = None,
    summary: dict[str, Any] | None = None,
) -> list[str]:
    """The shards of ``split`` as the summary lists them, checked against the index.

    The index is covered by the content checksum and the summary's lists are not, so a list
    that names other files than the split's index records (e.g. a ``pipe:`` command) is a
    DataError rather than something to open. Callers that hold the index or summary pass them.
    """
    listed = (load_summary(root) if summary is None else summary)["splits"][split]["shards"]
    records = read_index(root, split) if records is None else records
    indexed = list(dict.fromkeys(r["shard"] for r in records if r["split"] == split))
    if listed != indexed:
        raise DataError(
            f"{Path(root) / SUMMARY_FILE}: the shard list of split {split!r} does not match "
            f"{INDEX_FILE} ({len(listed)} listed, {len(indexed)} in the index)"
        )
    return list(listed)


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

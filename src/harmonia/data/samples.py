"""One decode path and one collate for both loaders: stored members -> tensors -> batch dict.

A corrupt sample never raises out of here: it becomes a skip record {"key", "shard", "reason"}
that travels with the next batch (batch["skipped"]), so the trainer can count and report it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from harmonia.data.media import CorruptMedia, decode_mp4
from harmonia.data.spec import MediaSpec
from harmonia.errors import first_line
from harmonia.files import parse_json

SKIPPED = "skipped"


class CorruptSample(Exception):
    """A stored sample cannot be decoded; the message says why."""


def decode_members(key: str, members: Mapping[str, bytes], spec: MediaSpec) -> dict[str, Any]:
    """Decode a sample's `json` (id + captions) and `mp4` members into the sample dict.

    Returns {"id": str, "video": uint8 [T, H, W, 3], "audio": float32 [N], "text": list[str]}.
    Raises CorruptSample.
    """
    if "json" not in members:
        raise CorruptSample("missing json member")
    if "mp4" not in members:
        raise CorruptSample("missing mp4 member")
    try:
        meta = parse_json(members["json"])
    except ValueError as err:  # bad syntax or UTF-8, too deep, an integer of too many digits
        raise CorruptSample(f"json member is not valid JSON ({first_line(err)[:80]})") from None
    captions = meta.get("captions") if isinstance(meta, dict) else None
    if not (isinstance(captions, list) and captions and all(isinstance(c, str) for c in captions)):
        raise CorruptSample("json member has no list of caption strings")
    if not any(c.strip() for c in captions):
        raise CorruptSample(f"json member's {len(captions)} captions are all zero-length")
    sample_id = meta.get("id", key)
    if sample_id != key:
        raise CorruptSample(f"json id {sample_id!r} does not match member name {key!r}")
    has_audio = meta.get("audio", True)
    if not isinstance(has_audio, bool):
        raise CorruptSample("json member's 'audio' must be true or false")
    try:
        video, audio = decode_mp4(members["mp4"], spec, audio=has_audio)
    except CorruptMedia as err:
        raise CorruptSample(f"mp4: {err}") from None
    return {
        "id": key,
        "video": torch.from_numpy(video),
        "audio": torch.from_numpy(audio),
        "text": list(captions),
    }


def skip_record(key: str, shard: str, reason: str) -> dict[str, Any]:
    """The item a loader yields in place of a corrupt sample."""
    return {SKIPPED: {"key": key, "shard": shard, "reason": reason}}


def is_skip(item: Mapping[str, Any]) -> bool:
    return SKIPPED in item


def collate(items: Sequence[Mapping[str, Any]], spec: MediaSpec | None = None) -> dict[str, Any]:
    """Batch dict (docs/data.md, "Read it back"): id, video [B,T,H,W,3] uint8, audio [B,N] float32,
    text list[list[str]] padded to the largest K by repeating, skipped list[dict].

    B counts decoded samples only; it is smaller than the requested batch size when samples
    were skipped, and may be 0 (then `spec` gives the empty tensors their shape).
    """
    samples = [it for it in items if not is_skip(it)]
    skipped = [dict(it[SKIPPED]) for it in items if is_skip(it)]
    if samples:
        video = torch.stack([s["video"] for s in samples])
        audio = torch.stack([s["audio"] for s in samples])
    else:
        t, h, w, n = (
            (spec.frames, spec.height, spec.width, spec.audio_samples) if spec else (0, 0, 0, 0)
        )
        video = torch.zeros((0, t, h, w, 3), dtype=torch.uint8)
        audio = torch.zeros((0, n), dtype=torch.float32)
    k = max((len(s["text"]) for s in samples), default=0)
    text = [[s["text"][i % len(s["text"])] for i in range(k)] for s in samples]
    return {
        "id": [s["id"] for s in samples],
        "video": video,
        "audio": audio,
        "text": text,
        SKIPPED: skipped,
    }

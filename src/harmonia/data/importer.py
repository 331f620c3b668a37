"""`harmonia data import`: a user's own clips and captions -> the dataset format the trainer reads.

Each `Candidate` (see `import_inputs`) is cut to the media spec of the model it will train
(`transcode.cut_clip`), re-encoded as the same H.264 + AAC mp4 as AV-MNIST-T, and packed with its
captions into WebDataset shards with ``index.jsonl`` and ``summary.json``, without labels. Every
key goes to ``train``, ``val`` or ``test`` by a hash of the seed and the key, so a re-import of
more data keeps every earlier clip in its split. Clips without audio are stored without an audio
track (``"audio": false`` in their json member): they decode to silence, which the model masks
out of the video-audio loss. What cannot be imported is skipped, counted and named.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from harmonia import __version__
from harmonia.data.import_inputs import Candidate, Refusal
from harmonia.data.index import (
    FORMAT,
    FORMAT_VERSION,
    INDEX_FILE,
    SUMMARY_FILE,
    content_checksum,
    write_index,
)
from harmonia.data.media import encode_mp4
from harmonia.data.shards import shard_name, write_shard
from harmonia.data.spec import MediaSpec
from harmonia.data.staging import check_output, staged_dataset
from harmonia.data.transcode import Fit, MediaRefused, cut_clip
from harmonia.errors import DataError

SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class ImportOptions:
    """How clips are cut and split (recorded in summary.json)."""

    media: MediaSpec = field(default_factory=MediaSpec)
    fit: Fit = "crop"
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    shard_size: int = 256
    video_stream: int = 0
    audio_stream: int = 0

    def validate(self) -> None:
        fractions = (self.val_fraction, self.test_fraction)
        if not all(0.0 <= f < 1.0 for f in fractions) or sum(fractions) >= 1.0:
            raise DataError("--val-fraction and --test-fraction must be in [0, 1) with sum < 1")
        if self.shard_size < 1 or self.video_stream < 0 or self.audio_stream < 0:
            raise DataError("--shard-size must be >= 1 and stream numbers >= 0")

    def split_of(self, key: str) -> str:
        """``train``, ``val`` or ``test`` for ``key``: stable for a seed, whatever else is imported."""
        digest = hashlib.sha256(f"{self.seed}:{key}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
        if u < self.test_fraction:
            return "test"
        return "val" if u < self.test_fraction + self.val_fraction else "train"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "media": self.media.to_dict()}


@dataclass(frozen=True)
class _Imported:
    key: str
    mp4: bytes
    meta: bytes
    record: dict[str, Any]
    seconds: float


def import_dataset(
    inputs: Iterable[Candidate | Refusal],
    out: Path | str,
    options: ImportOptions | None = None,
    *,
    describe: dict[str, Any] | None = None,
    folder: Path | str | None = None,
    overwrite: bool = False,
    workers: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Import ``inputs`` into the dataset ``out``; returns its summary (also out/summary.json).

    ``folder``, the folder the clips' files are named relative to, is recorded absolute as the
    summary's ``import.folder`` (`source_folder`), so the audit can link each clip to its file.
    """
    out = Path(out)
    options = options or ImportOptions()
    options.validate()
    check_output(out, overwrite)
    if workers < 1:
        raise DataError(f"--workers must be >= 1, got {workers}")
    started = time.perf_counter()
    candidates, skipped = _unique(inputs)
    order = {split: n for n, split in enumerate(SPLITS)}
    candidates.sort(key=lambda c: order[options.split_of(c.key)])  # stable: input order kept
    with staged_dataset(out, overwrite) as tmp:
        records, failed = _write_shards(tmp, candidates, options, workers, progress)
        skipped += failed
        if not records:
            raise DataError(f"no clip could be imported ({_reasons(skipped)})")
        write_index(tmp / INDEX_FILE, records)
        summary = _summary(records, skipped, options, tmp, describe, folder, started, workers)
        (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _unique(inputs: Iterable[Candidate | Refusal]) -> tuple[list[Candidate], list[Refusal]]:
    candidates: list[Candidate] = []
    skipped: list[Refusal] = []
    seen: set[str] = set()
    for item in inputs:
        if isinstance(item, Refusal):
            skipped.append(item)
        elif item.key in seen:
            skipped.append(Refusal(item.source, f"duplicate key {item.key!r}"))
        else:
            seen.add(item.key)
            candidates.append(item)
    return candidates, skipped


def _write_shards(
    root: Path, candidates: list[Candidate], options: ImportOptions, workers: int, progress: bool
) -> tuple[list[dict[str, Any]], list[Refusal]]:
    bar = tqdm(total=len(candidates), desc="importing", unit="clip", disable=not progress)
    pool = None
    if workers > 1:
        ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        pool = ctx.Pool(workers)
    try:
        tasks = ((c, options) for c in candidates)
        results: Iterator[_Imported | Refusal] = (
            pool.imap(_import_one, tasks, chunksize=4) if pool else map(_import_one, tasks)
        )
        records: list[dict[str, Any]] = []
        failed: list[Refusal] = []
        pending: dict[str, list[_Imported]] = {split: [] for split in SPLITS}
        counters: Counter[str] = Counter()

        def flush(split: str) -> None:
            done = pending[split]
            if not done:
                return
            name = shard_name(split, counters[split])
            counters[split] += 1
            members = write_shard(
                root / name, [(d.key, [("json", d.meta), ("mp4", d.mp4)]) for d in done]
            )
            for d in done:
                records.append({**d.record, "shard": name, "members": members[d.key]})
            pending[split] = []

        for result in results:
            bar.update(1)
            if isinstance(result, Refusal):
                failed.append(result)
                continue
            split = result.record["split"]
            pending[split].append(result)
            if len(pending[split]) == options.shard_size:
                flush(split)
        for split in SPLITS:
            flush(split)
        records.sort(key=lambda r: SPLITS.index(r["split"]))  # shards of a split together
        return records, failed
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()


def _import_one(task: tuple[Candidate, ImportOptions]) -> _Imported | Refusal:
    """Cut, encode and describe one clip (in a worker process); a Refusal when it cannot."""
    candidate, options = task
    spec = options.media
    start = _clip_start(candidate, spec)
    source = candidate.data if candidate.data is not None else candidate.path
    assert source is not None
    try:
        clip = cut_clip(
            source,
            spec,
            start,
            fit=options.fit,
            video_stream=options.video_stream,
            audio_stream=options.audio_stream,
        )
        mp4 = encode_mp4(clip.video, clip.audio, spec)
    except MediaRefused as err:
        return Refusal(candidate.source, str(err))
    except Exception as err:  # a codec that fails in a way PyAV does not classify
        return Refusal(candidate.source, f"{type(err).__name__}: {str(err)[:120]}")
    has_audio = clip.audio is not None
    meta = {"id": candidate.key, "captions": list(candidate.captions), "audio": has_audio}
    record: dict[str, Any] = {
        "id": candidate.key,
        "split": options.split_of(candidate.key),
        "file": candidate.file if candidate.file is not None else candidate.source,
        "start": round(start, 3),
        "end": round(start + spec.seconds, 3),
        "has_audio": has_audio,
    }
    if candidate.end is not None:
        record["caption_span"] = [candidate.start, candidate.end]
    if candidate.metadata:
        record["metadata"] = candidate.metadata
    seconds = clip.duration if clip.duration is not None else spec.seconds
    return _Imported(candidate.key, mp4, json.dumps(meta).encode(), record, seconds)


def _clip_start(candidate: Candidate, spec: MediaSpec) -> float:
    """Where the clip starts: at ``start``, or centred on a caption's span when it has an end."""
    if candidate.end is None:
        return candidate.start
    middle = (candidate.start + candidate.end) / 2
    return max(0.0, middle - spec.seconds / 2)


def _reasons(skipped: list[Refusal]) -> str:
    counts = Counter(r.reason for r in skipped)
    return "; ".join(f"{n} x {reason}" for reason, n in counts.most_common(5)) or "no input"


def _summary(
    records: list[dict[str, Any]],
    skipped: list[Refusal],
    options: ImportOptions,
    root: Path,
    describe: dict[str, Any] | None,
    folder: Path | str | None,
    started: float,
    workers: int,
) -> dict[str, Any]:
    splits: dict[str, Any] = {}
    for split in SPLITS:
        mine = [r for r in records if r["split"] == split]
        if not mine:
            continue
        shards = list(dict.fromkeys(r["shard"] for r in mine))
        splits[split] = {
            "samples": len(mine),
            "shards": shards,
            "without_audio": sum(not r["has_audio"] for r in mine),
            "bytes": sum((root / s).stat().st_size for s in shards),
        }
    total = sum((root / s).stat().st_size for v in splits.values() for s in v["shards"])
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "checksum": content_checksum(records, options.media),
        "samples": len(records),
        "bytes": total + (root / INDEX_FILE).stat().st_size,
        "media": options.media.to_dict(),
        "labels": False,
        "splits": splits,
        "import": {
            "inputs": describe or {},
            **({} if folder is None else {"folder": str(Path(folder).resolve())}),
            "options": options.to_dict(),
            "imported": len(records),
            "skipped": len(skipped),
            "skipped_by_reason": dict(Counter(r.reason for r in skipped).most_common()),
            "skipped_items": [{"source": r.source, "reason": r.reason} for r in skipped],
            "seconds": round(time.perf_counter() - started, 2),
            "workers": workers,
            "harmonia_version": __version__,
        },
    }


def source_folder(summary: Mapping[str, Any]) -> Path | None:
    """The folder an imported dataset's ``file`` paths are relative to (its summary's absolute
    ``import.folder``, resolved); None for a dataset built, imported from shards or imported
    before the folder was recorded."""
    section = summary.get("import")
    folder = section.get("folder") if isinstance(section, Mapping) else None
    if not isinstance(folder, str) or "\0" in folder or not Path(folder).is_absolute():
        return None
    try:
        return Path(folder).resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return None

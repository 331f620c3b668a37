"""What `harmonia data import` reads: clips to cut, each with its captions, from a user's data.

Three kinds of input, each yielding `Candidate` clips (and `Refusal` records for what cannot be
one, with the reason):

- a folder of media files plus a captions table (``.csv`` or ``.jsonl``): one row per clip,
  ``path`` relative to the folder, ``caption`` (one string) and/or ``captions`` (a list; in a
  CSV a JSON list), optional ``start`` / ``end`` seconds and ``key``; every other column is kept
  as the clip's metadata. Rows with the same key add their captions to one clip.
- long narrated videos with timed captions (a sidecar ``name.srt`` / ``name.vtt`` beside
  ``name.mp4``, or a subtitle stream inside the file): one clip per caption segment, with the
  neighbouring segments' texts as its extra candidate captions (MIL-NCE's candidates);
- WebDataset shards as video2dataset writes them: ``{key}.mp4`` with ``{key}.txt`` and/or
  ``{key}.json`` (its ``caption`` field) in local ``.tar`` files, given as paths or brace
  patterns (``shards/{00000..00009}.tar``).

Nothing here decodes audio or video (subtitle streams only); paths that leave the folder are
refused, never followed.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harmonia.data.shards import expand_braces
from harmonia.data.subtitles import embedded, read_sidecar, sidecar
from harmonia.data.transcode import MediaRefused
from harmonia.errors import DataError
from harmonia.files import inside, parse_json

MAX_TABLE_BYTES = 1 << 30
MAX_MEMBER_BYTES = 1 << 30
"""A shard member larger than this is refused (read into memory to be transcoded)."""
MAX_CAPTION_CHARS = 2000
KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,199}$")
"""Sample keys: shard members are named ``{key}.{extension}``, so a key holds no dot."""
RESERVED = {"path", "caption", "captions", "start", "end", "key"}


@dataclass(frozen=True)
class Candidate:
    """One clip to cut: where its media is, when it starts, its captions and metadata."""

    key: str
    captions: tuple[str, ...]
    source: str
    """The file as the user named it (a path relative to the folder, ``shard:member``, or a
    timed caption's ``file#segment``), in messages and, without ``file``, in the index."""
    path: Path | None = None
    data: bytes | None = None
    start: float = 0.0
    end: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    file: str | None = None
    """The media file relative to the folder when ``source`` says more (a timed caption's
    segment): the index's ``file``, which `harmonia audit` links to."""


@dataclass(frozen=True)
class Refusal:
    """An input that is not imported, and why (counted and named in the summary)."""

    source: str
    reason: str


def table_candidates(folder: Path, table: Path) -> Iterator[Candidate | Refusal]:
    """The clips a captions table names in ``folder`` (rows merged by key, in table order)."""
    root = folder.resolve()
    if not root.is_dir():
        raise DataError(f"{folder}: not a folder")
    merged: dict[str, Candidate] = {}
    for number, row in _rows(table):
        where = f"{table.name}:{number}"
        made = _candidate(root, row, where)
        if isinstance(made, Refusal):
            yield made
            continue
        before = merged.get(made.key)
        if before is None:
            merged[made.key] = made
        elif (before.path, before.start, before.end) != (made.path, made.start, made.end):
            yield Refusal(where, f"duplicate key {made.key!r} for another file or span")
        else:
            captions = before.captions + tuple(c for c in made.captions if c not in before.captions)
            merged[made.key] = dataclasses.replace(before, captions=captions)
    yield from merged.values()


def _rows(table: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        if table.stat().st_size > MAX_TABLE_BYTES:
            raise DataError(f"{table}: larger than {MAX_TABLE_BYTES} bytes")
        text = table.read_bytes().decode("utf-8-sig")
    except OSError as err:
        raise DataError(f"{table}: cannot read ({err.strerror or err})") from None
    except UnicodeDecodeError:
        raise DataError(f"{table}: not UTF-8 text") from None
    if table.suffix.lower() == ".jsonl":
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = parse_json(line)
            except ValueError:
                row = None
            yield number, row if isinstance(row, dict) else {"__invalid__": "not a JSON object"}
        return
    if table.suffix.lower() != ".csv":
        raise DataError(f"{table}: expected a .csv or .jsonl captions table")
    reader = csv.DictReader(io.StringIO(text))
    if "path" not in (reader.fieldnames or []):
        raise DataError(f"{table}: the table has no 'path' column")
    for number, row in enumerate(reader, 2):
        yield number, dict(row)


def _candidate(root: Path, row: Mapping[str, Any], where: str) -> Candidate | Refusal:
    if "__invalid__" in row:
        return Refusal(where, row["__invalid__"])
    raw = row.get("path")
    if not isinstance(raw, str) or not raw.strip():
        return Refusal(where, "no path")
    path = inside(root, raw)
    if path is None:
        return Refusal(f"{where} ({raw})", "the path leaves the folder (refused, not followed)")
    if not path.is_file():
        return Refusal(f"{where} ({raw})", "no such file")
    captions = _captions(row)
    if isinstance(captions, Refusal):
        return Refusal(f"{where} ({raw})", captions.reason)
    span = _span(row)
    if isinstance(span, str):
        return Refusal(f"{where} ({raw})", span)
    start, end = span
    key = row.get("key") or _key_for(raw, start)
    if not isinstance(key, str) or not KEY.match(key):
        return Refusal(f"{where} ({raw})", f"invalid key {key!r} (letters, digits, _ -)")
    metadata = {str(k): v for k, v in row.items() if k not in RESERVED and v not in (None, "")}
    return Candidate(key, captions, raw, path=path, start=start, end=end, metadata=metadata)


def _captions(row: Mapping[str, Any]) -> tuple[str, ...] | Refusal:
    found: list[Any] = []
    if row.get("caption") not in (None, ""):
        found.append(row["caption"])
    listed = row.get("captions")
    if isinstance(listed, str) and listed.strip():
        try:
            listed = json.loads(listed)
        except ValueError:
            return Refusal("", "'captions' is not a JSON list")
    if isinstance(listed, list):
        found.extend(listed)
    elif listed not in (None, ""):
        return Refusal("", "'captions' must be a list")
    return clean_captions(found)


def clean_captions(found: Sequence[Any]) -> tuple[str, ...] | Refusal:
    """Non-empty caption strings (whitespace collapsed, at most MAX_CAPTION_CHARS), in order."""
    captions: list[str] = []
    for item in found:
        if not isinstance(item, str):
            return Refusal("", f"a caption is not a string ({type(item).__name__})")
        text = " ".join(item.split())[:MAX_CAPTION_CHARS]
        if text and text not in captions:
            captions.append(text)
    if not captions:
        return Refusal("", "no non-empty caption")
    return tuple(captions)


def _span(row: Mapping[str, Any]) -> tuple[float, float | None] | str:
    try:
        start = float(row.get("start") or 0.0)
        end = float(row["end"]) if row.get("end") not in (None, "") else None
    except (TypeError, ValueError):
        return "start/end are not numbers"
    if not (start >= 0.0 and start < float("inf")):
        return f"invalid start {start}"
    if end is not None and not end > start:
        return f"zero-length or reversed span ({start:g} to {end:g} s)"
    return start, end


def _key_for(path: str, start: float) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", path).strip("_-") or "clip"
    suffix = f"_{start:.3f}s".replace(".", "_") if start else ""
    return (stem + suffix)[-200:].lstrip("_-") or "clip"


# ---------------------------------------------------------------------- timed captions
MEDIA_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi")


def subtitle_candidates(
    folder: Path, *, neighbours: int = 1, stream: int = 0
) -> Iterator[Candidate | Refusal]:
    """One clip per caption segment of every video under ``folder`` (sorted by path)."""
    root = folder.resolve()
    if not root.is_dir():
        raise DataError(f"{folder}: not a folder")
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in MEDIA_SUFFIXES):
        name = path.relative_to(root).as_posix()
        if inside(root, name) is None or not path.is_file():
            yield Refusal(name, "the path leaves the folder (refused, not followed)")
            continue
        try:
            side = sidecar(path)
            segments = read_sidecar(side) if side is not None else embedded(path, stream)
        except MediaRefused as err:
            yield Refusal(name, str(err))
            continue
        if not segments:
            yield Refusal(name, "no timed captions (no .srt/.vtt beside it, no subtitle stream)")
            continue
        texts = [s.text for s in segments]
        for number, segment in enumerate(segments):
            where = f"{name}#{number}"
            if not segment.end > segment.start:
                yield Refusal(where, f"zero-length or reversed span ({segment.start:g} s)")
                continue
            near = texts[max(0, number - neighbours) : number + neighbours + 1]
            found = [segment.text, *(t for t in near if t != segment.text)]
            captions = clean_captions(found) if segment.text else Refusal("", "empty caption")
            if isinstance(captions, Refusal):
                yield Refusal(where, captions.reason)
                continue
            key = f"{_key_for(name, 0.0)}_{number:05d}"
            yield Candidate(
                key,
                captions,
                where,
                path=path,
                start=segment.start,
                end=segment.end,
                metadata={"segment": number, "caption_source": "sidecar" if side else "stream"},
                file=name,
            )


# ---------------------------------------------------------------------- WebDataset shards
def shard_candidates(patterns: Sequence[str]) -> Iterator[Candidate | Refusal]:
    """The clips of video2dataset-style shards: ``{key}.mp4`` + ``.txt`` / ``.json`` captions."""
    for pattern in patterns:
        for name in expand_braces(pattern):
            path = Path(name)
            if not path.is_file():
                yield Refusal(name, "no such shard")
                continue
            yield from _shard(path)


def _shard(path: Path) -> Iterator[Candidate | Refusal]:
    groups: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(path, mode="r:*") as archive:
            for member in archive:
                if not member.isfile() or "." not in member.name:
                    continue
                key, ext = member.name.rsplit("/", 1)[-1].split(".", 1)
                if ext not in ("mp4", "webm", "mkv", "avi", "txt", "json"):
                    continue
                if member.size > MAX_MEMBER_BYTES:
                    yield Refusal(f"{path.name}:{member.name}", "member too large")
                    continue
                handle = archive.extractfile(member)
                if handle is not None:
                    groups.setdefault(key, {})[ext] = handle.read()
    except (tarfile.TarError, OSError, EOFError) as err:
        yield Refusal(str(path), f"not a readable tar file ({err})")
    for key, members in groups.items():
        yield _shard_candidate(path, key, members)


def _shard_candidate(path: Path, key: str, members: dict[str, bytes]) -> Candidate | Refusal:
    where = f"{path.name}:{key}"
    media = next((members[e] for e in ("mp4", "webm", "mkv", "avi") if e in members), None)
    if media is None:
        return Refusal(where, "no video member")
    found: list[Any] = []
    metadata: dict[str, Any] = {}
    try:
        if "txt" in members:
            found.append(members["txt"].decode("utf-8"))
        if "json" in members:
            meta = parse_json(members["json"])
            if isinstance(meta, dict):
                if isinstance(meta.get("caption"), str):
                    found.append(meta["caption"])
                metadata = {k: v for k, v in meta.items() if k != "caption" and _plain(v)}
    except (UnicodeDecodeError, ValueError):
        return Refusal(where, "captions are not UTF-8 text / valid JSON")
    captions = clean_captions(found)
    if isinstance(captions, Refusal):
        return Refusal(where, captions.reason)
    if not KEY.match(key):
        return Refusal(where, f"invalid key {key!r} (letters, digits, _ -)")
    return Candidate(key, captions, where, data=media, metadata=metadata)


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))

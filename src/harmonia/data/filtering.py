"""`harmonia data filter`: a copy of a dataset without the clips a run's ledger suspects most.

The "clean your data" loop: train, read the conflict ledger (``RUN/ledger.csv``), write the
dataset again without the ``k`` most suspected training clips (or a fraction of them, or those
scoring below a threshold), then train on the copy. Only the training split is filtered (the
ledger scores only what was trained on); the other splits are copied as they are. The copy holds
every kept member byte for byte (its index keeps each clip's metadata and labels), a
``dropped.csv`` manifest (id, rank, score, conflicts, seen, why) and a summary that says where it
came from; it is written atomically like any dataset.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Collection, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from harmonia import __version__
from harmonia.data.index import (
    INDEX_FILE,
    SUMMARY_FILE,
    content_checksum,
    load_media_spec,
    load_summary,
    read_index,
    write_index,
)
from harmonia.data.shards import open_shard, read_member, shard_name, write_shard
from harmonia.data.staging import staged_dataset
from harmonia.errors import DataError
from harmonia.harmonization.ledger import ConflictLedger, LedgerEntry

MANIFEST = "dropped.csv"
SHARD_SIZE = 256


@dataclass(frozen=True)
class FilterRule:
    """Which training clips go: the ``top`` most suspected, a ``fraction`` of the split, or those
    scoring ``below`` a threshold (exactly one of them)."""

    top: int | None = None
    fraction: float | None = None
    below: float | None = None

    def validate(self) -> None:
        given = [v is not None for v in (self.top, self.fraction, self.below)]
        if sum(given) != 1:
            raise DataError("give exactly one of --drop-top K, --drop-fraction F, --below SCORE")
        if self.top is not None and self.top < 0:
            raise DataError(f"--drop-top must be >= 0, got {self.top}")
        if self.fraction is not None and not 0.0 <= self.fraction < 1.0:
            raise DataError(f"--drop-fraction must be in [0, 1), got {self.fraction}")

    def choose(self, ranked: Sequence[LedgerEntry], size: int) -> tuple[list[LedgerEntry], str]:
        """The entries to drop (most suspected first) and the reason to record for them."""
        if self.top is not None:
            return list(ranked[: self.top]), f"among the {self.top} most suspected"
        if self.fraction is not None:
            count = round(self.fraction * size)
            return list(ranked[:count]), f"among the most suspected {self.fraction:g} of the split"
        assert self.below is not None
        return [e for e in ranked if e.score < self.below], f"score below {self.below:g}"


def ranked_suspects(ledger: ConflictLedger, ids: Collection[str]) -> list[LedgerEntry]:
    """The ledger's entries for ``ids``, most suspected first (ids it never saw are no suspects)."""
    return [e for e in ledger.ranking() if e.id in ids]


def filter_dataset(
    source: Path | str,
    ledger_csv: Path | str,
    out: Path | str,
    rule: FilterRule,
    *,
    split: str = "train",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Copy ``source`` to ``out`` without the clips of ``split`` that ``rule`` picks from the
    ledger; returns the new summary."""
    source, out = Path(source), Path(out)
    rule.validate()
    if out.resolve() == source.resolve():
        raise DataError(f"--out {out} is the dataset being filtered: write the copy elsewhere")
    started = time.perf_counter()
    summary = load_summary(source)
    records = read_index(source)
    mine = {r["id"] for r in records if r["split"] == split}
    if not mine:
        raise DataError(f"{source} has no split {split!r} to filter")
    ledger = ConflictLedger.from_csv(ledger_csv)
    ranked = ranked_suspects(ledger, mine)
    if not ranked:
        raise DataError(
            f"{ledger_csv} scores none of the {len(mine)} clips of {split!r} in {source}"
        )
    chosen, why = rule.choose(ranked, len(mine))
    dropped = {e.id for e in chosen}
    kept = [r for r in records if r["id"] not in dropped]
    with staged_dataset(out, overwrite) as tmp:
        new_records = _copy(source, tmp, kept)
        write_index(tmp / INDEX_FILE, new_records)
        _write_manifest(tmp / MANIFEST, ranked, chosen, why)
        new = _summary(summary, source, ledger_csv, tmp, new_records, len(dropped), why, split)
        new["filter"]["seconds"] = round(time.perf_counter() - started, 2)
        (tmp / SUMMARY_FILE).write_text(json.dumps(new, indent=2) + "\n", encoding="utf-8")
    return new


def _copy(source: Path, root: Path, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Repack the kept records' members, split by split, into new shards."""
    out: list[dict[str, Any]] = []
    with ExitStack() as stack:
        handles: dict[str, BinaryIO] = {}  # each source shard opened once

        def members(record: dict[str, Any]) -> list[tuple[str, bytes]]:
            name = record["shard"]
            if name not in handles:
                handles[name] = stack.enter_context(open_shard(source, name))
            fh = handles[name]
            return [
                (ext, read_member(fh, int(m["offset"]), int(m["size"])))
                for ext, m in record["members"].items()
            ]

        for split in dict.fromkeys(r["split"] for r in records):
            mine = [r for r in records if r["split"] == split]
            for number, start in enumerate(range(0, len(mine), SHARD_SIZE)):
                part = mine[start : start + SHARD_SIZE]
                name = shard_name(split, number)
                written = write_shard(root / name, [(r["id"], members(r)) for r in part])
                out += [{**r, "shard": name, "members": written[r["id"]]} for r in part]
    return out


def _write_manifest(
    path: Path, ranked: list[LedgerEntry], chosen: list[LedgerEntry], why: str
) -> None:
    rank = {e.id: n for n, e in enumerate(ranked, 1)}
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "rank", "score", "conflicts", "seen", "why"])
        for e in chosen:
            writer.writerow([e.id, rank[e.id], f"{e.score:.6f}", e.conflicts, e.seen, why])


def _summary(
    base: dict[str, Any],
    source: Path,
    ledger_csv: Path | str,
    root: Path,
    records: list[dict[str, Any]],
    dropped: int,
    why: str,
    split: str,
) -> dict[str, Any]:
    splits: dict[str, Any] = {}
    for name, before in base["splits"].items():
        mine = [r for r in records if r["split"] == name]
        shards = list(dict.fromkeys(r["shard"] for r in mine))
        splits[name] = {
            **{k: v for k, v in before.items() if k in ("speakers", "image_range")},
            "samples": len(mine),
            "shards": shards,
            "bytes": sum((root / s).stat().st_size for s in shards),
        }
    media = load_media_spec(source)
    return {
        "format": base["format"],
        "version": base["version"],
        "checksum": content_checksum(records, media),
        "samples": len(records),
        "bytes": sum(v["bytes"] for v in splits.values()) + (root / INDEX_FILE).stat().st_size,
        "media": base["media"],
        "labels": base.get("labels", True),
        "splits": splits,
        "filter": {
            "source": str(source),
            "source_checksum": base["checksum"],
            "ledger": str(ledger_csv),
            "split": split,
            "dropped": dropped,
            "rule": why,
            "manifest": MANIFEST,
            "harmonia_version": __version__,
        },
    }

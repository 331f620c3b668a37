"""Build an AV-MNIST-T dataset: plan, render + encode (in worker processes), write shards and index.

Everything is written into a temporary sibling directory that is renamed into place at the end,
so an interrupted or failed build never leaves a half-written dataset behind.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from harmonia import __version__
from harmonia.data.clips import ClipTask, render_clip
from harmonia.data.config import BuildConfig
from harmonia.data.index import (
    FORMAT,
    FORMAT_VERSION,
    INDEX_FILE,
    SUMMARY_FILE,
    content_checksum,
    write_index,
)
from harmonia.data.plan import SamplePlan, make_plans, split_pools
from harmonia.data.shards import SHARD_FOLDER, shard_name, write_shard
from harmonia.data.source_data import SourceData
from harmonia.data.staging import check_output, staged_dataset
from harmonia.errors import DataError


def default_workers() -> int:
    """Worker processes for rendering: the CPUs this process may use, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def build_dataset(
    config: BuildConfig,
    source: SourceData,
    out: Path | str,
    *,
    overwrite: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Build the dataset into `out` and return its summary (also written to out/summary.json)."""
    out = Path(out)
    check_output(out, overwrite)
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise DataError(f"--workers must be >= 1, got {workers}")
    started = time.perf_counter()
    plans = make_plans(config, source)
    with staged_dataset(out, overwrite) as tmp:
        records = _write_shards(tmp, plans, config, source, workers, progress)
        write_index(tmp / INDEX_FILE, records)
        summary = _summary(
            config, source, plans, records, tmp, time.perf_counter() - started, workers
        )
        (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _tasks(plans: list[SamplePlan], config: BuildConfig, source: SourceData) -> Iterator[ClipTask]:
    waves: dict[str, tuple[np.ndarray, int]] = {}
    by_name = {r.name: r for r in source.recordings}
    for plan in plans:
        if plan.audio_file not in waves:
            waves[plan.audio_file] = source.load_waveform(by_name[plan.audio_file])
        wave, rate = waves[plan.audio_file]
        yield ClipTask(plan, source.images[plan.image_index], wave, rate, config.media)


def _write_shards(
    root: Path,
    plans: list[SamplePlan],
    config: BuildConfig,
    source: SourceData,
    workers: int,
    progress: bool,
) -> list[dict[str, Any]]:
    """Render all clips (in order) and pack them into shards; return the index records."""
    bar = tqdm(total=len(plans), desc="building AV-MNIST-T", unit="clip", disable=not progress)
    pool = None
    if workers > 1:
        ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        pool = ctx.Pool(workers)
    try:
        tasks = _tasks(plans, config, source)
        results = pool.imap(render_clip, tasks, chunksize=8) if pool else map(render_clip, tasks)
        records: list[dict[str, Any]] = []
        pending: list[tuple[str, bytes, bytes]] = []
        plan_by_id = {p.id: p for p in plans}
        counters: Counter[str] = Counter()
        for position, result in enumerate(results):
            pending.append(result)
            bar.update(1)
            plan = plans[position]
            last_of_split = position + 1 == len(plans) or plans[position + 1].split != plan.split
            if len(pending) == config.shard_size or last_of_split:
                name = shard_name(plan.split, counters[plan.split])
                counters[plan.split] += 1
                members = write_shard(
                    root / name,
                    [(key, [("json", meta), ("mp4", mp4)]) for key, mp4, meta in pending],
                )
                for key, _, _ in pending:
                    record = plan_by_id[key].labels()
                    record["shard"] = name
                    record["members"] = members[key]
                    records.append(record)
                pending = []
        return records
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()


def _summary(
    config: BuildConfig,
    source: SourceData,
    plans: list[SamplePlan],
    records: list[dict[str, Any]],
    root: Path,
    seconds: float,
    workers: int,
) -> dict[str, Any]:
    pools = split_pools(source, config)
    splits: dict[str, Any] = {}
    for split in config.splits:
        mine = [p for p in plans if p.split == split]
        n = len(mine)
        shards = sorted({r["shard"] for r in records if r["split"] == split})
        text = sum(p.misaligned_text for p in mine)
        audio = sum(p.misaligned_audio for p in mine)
        either = sum(p.misaligned_text or p.misaligned_audio for p in mine)
        splits[split] = {
            "samples": n,
            "shards": shards,
            "speakers": list(pools[split].speakers),
            "image_range": list(pools[split].images),
            "digits": {str(d): sum(p.digit == d for p in mine) for d in range(10)},
            "motions": dict(Counter(p.motion for p in mine)),
            "noise": {
                "configured": config.noise_rate(split),
                "misaligned": either / n if n else 0.0,
                "text": text / n if n else 0.0,
                "audio": audio / n if n else 0.0,
            },
            "bytes": sum((root / s).stat().st_size for s in shards),
        }
    total_bytes = sum(p.stat().st_size for p in (root / SHARD_FOLDER).iterdir())
    total_bytes += (root / INDEX_FILE).stat().st_size
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "checksum": content_checksum(records, config.media),
        "samples": len(plans),
        "bytes": total_bytes,
        "media": config.media.to_dict(),
        "splits": splits,
        "build": {
            "options": config.to_dict(),
            "source": source.description,
            "seconds": round(seconds, 2),
            "workers": workers,
            "harmonia_version": __version__,
        },
    }

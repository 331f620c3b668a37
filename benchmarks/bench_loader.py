"""Measure AV-MNIST-T: build time and size of the default dataset, loader decode throughput.

    .venv/bin/python benchmarks/bench_loader.py                 # build the default set in a temp dir
    .venv/bin/python benchmarks/bench_loader.py --data runs/demo/data   # reuse a built set

Prints one JSON object per measurement. Throughput is decoded samples per second over one pass
of the split (worker start-up included), side by side for both loaders and worker counts.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from harmonia.data import (
    BuildConfig,
    ShardDataset,
    build_dataset,
    load_summary,
    make_loader,
    make_stream_loader,
    resolve_source,
)


def disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def bench_build(out: Path, source: str | None, workers: int) -> dict:
    config = BuildConfig()  # the default configuration (what `harmonia demo` builds)
    src = resolve_source(source, allow_builtin=True)
    started = time.perf_counter()
    summary = build_dataset(config, src, out, workers=workers, progress=False)
    seconds = time.perf_counter() - started
    return {
        "what": "build default dataset",
        "samples": summary["samples"],
        "seconds": round(seconds, 2),
        "clips_per_s": round(summary["samples"] / seconds, 1),
        "workers": workers,
        "bytes_on_disk": disk_bytes(out),
        "source": src.kind,
    }


def bench_loader(kind: str, data: Path, split: str, workers: int, batch: int) -> dict:
    if kind == "map":
        loader = make_loader(ShardDataset(data, split), batch, shuffle=True, num_workers=workers)
    else:
        loader = make_stream_loader(data, split, batch_size=batch, num_workers=workers)
    started = time.perf_counter()
    samples = skipped = 0
    for b in loader:
        samples += len(b["id"])
        skipped += len(b["skipped"])
    seconds = time.perf_counter() - started
    return {
        "what": f"{kind} loader",
        "split": split,
        "workers": workers,
        "batch_size": batch,
        "samples": samples,
        "skipped": skipped,
        "seconds": round(seconds, 2),
        "samples_per_s": round(samples / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", default=None, help="a built dataset (default: build one in a temp dir)"
    )
    parser.add_argument(
        "--source", default=None, help="source for the build (default: $HARMONIA_DATA...)"
    )
    parser.add_argument("--build-workers", type=int, default=2)
    parser.add_argument("--split", default="train")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", default="0,2", help="comma-separated DataLoader worker counts")
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data) if args.data else Path(tmp) / "avmnist"
        if args.data is None:
            print(json.dumps(bench_build(data, args.source, args.build_workers)), flush=True)
        else:
            print(
                json.dumps(
                    {
                        "what": "dataset",
                        "samples": load_summary(data)["samples"],
                        "bytes_on_disk": disk_bytes(data),
                    }
                )
            )
        for workers in (int(w) for w in args.workers.split(",")):
            for kind in ("map", "stream"):
                print(
                    json.dumps(bench_loader(kind, data, args.split, workers, args.batch_size)),
                    flush=True,
                )


if __name__ == "__main__":
    main()

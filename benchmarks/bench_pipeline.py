"""Is the data pipeline fast enough for the demo? Decoded samples/s vs what a training step eats.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_pipeline.py [--data DATASET_DIR]

Without ``--data`` it builds the default AV-MNIST-T dataset (what `harmonia demo` trains on) in a
temporary directory first. Supply: one pass over the training split with the trainer's loader
(map-style `ShardDataset` + `make_loader`, batch size of the config) with 0 workers (decoding in
the main process: one worker's rate), 1 and 2 workers (`bench_loader.bench_loader`; worker
start-up included). Demand: samples/s of the config's training step (forward + losses +
backward, the config's harmonizer; its curriculum weights and ledger, a few element-wise
operations per sample, are left out) on a synthetic batch of the same shapes, median wall time of
interleaved repeats on one thread. Both are also given per CPU second (the decoding process with 0
workers, the training step), which a loaded machine disturbs much less than wall time. Prints
markdown.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench_harmonizer import build, measure, variants
from bench_loader import bench_build, bench_loader
from harmonia.training.config import load_train_config
from harness import machine_line, table


def consumption(configs: list[str], repeats: int) -> dict[str, tuple[float, float]]:
    """Samples per wall second and per CPU second of each config's training step."""
    result = {}
    for name in configs:
        cfg = load_train_config(name)
        h = cfg.harmonize
        model, objective, batch = build(cfg.data.batch_size, "tiny")
        if cfg.model != model.config:
            raise SystemExit(f"config {name}: model is not the tiny size this script times")
        grid = [] if h.method == "none" else [(h.space, h.method)]
        steps = variants(model, objective, batch, False, grid)
        name_of_step = list(steps)[-1]
        wall = measure(steps, repeats, 2, time.perf_counter)[name_of_step]
        cpu = measure(steps, repeats, 0, time.process_time)[name_of_step]
        b = cfg.data.batch_size
        result[name] = (b / statistics.median(wall), b / statistics.median(cpu))
    return result


def supply(data: Path, workers: int, batch_size: int) -> tuple[float, float]:
    """Samples per wall second of one pass, and per CPU second of this process (meaningful
    with 0 workers, where this process decodes)."""
    started = time.process_time()
    result = bench_loader("map", data, "train", workers, batch_size)
    return result["samples_per_s"], result["samples"] / (time.process_time() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="a built dataset (default: build the default one)")
    parser.add_argument("--source", help="source for the build (default: $HARMONIA_DATA...)")
    parser.add_argument("--configs", nargs="+", default=["demo", "demo-harmonized"])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    batch_size = load_train_config(args.configs[0]).data.batch_size
    print(f"{machine_line()}\n")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data) if args.data else Path(tmp) / "avmnist"
        if args.data is None:
            built = bench_build(data, args.source, workers=2)
            print(
                f"Built the default dataset ({built['samples']} clips) in {built['seconds']} s "
                f"with 2 workers ({built['clips_per_s']} clips/s).\n"
            )
        loaded = {w: supply(data, w, batch_size) for w in args.workers}
    demand = consumption(args.configs, args.repeats)
    rows: list[list[object]] = [
        [
            f"loader, {w} worker(s) (B = {batch_size})",
            f"{wall:.0f}",
            f"{cpu:.0f}" if w == 0 else "-",
        ]
        for w, (wall, cpu) in loaded.items()
    ]
    rows += [
        [f"training step of config `{c}` (1 thread)", f"{wall:.0f}", f"{cpu:.0f}"]
        for c, (wall, cpu) in demand.items()
    ]
    print(table(["", "samples per wall second", "samples per CPU second"], rows))
    fastest = max(wall for wall, _ in demand.values())
    print(
        "\nWall time, loader over the fastest step: "
        + ", ".join(f"{w} worker(s) {wall / fastest:.1f}x" for w, (wall, _) in loaded.items())
        + "."
    )
    if 0 in loaded:
        decode = loaded[0][1]
        hungriest = max(cpu for _, cpu in demand.values())
        print(
            f"CPU cost: one core decodes {decode:.0f} samples/s, one core of training consumes "
            f"{hungriest:.0f}; keeping up takes {hungriest / decode:.2f} decoding cores per "
            "training core."
        )


if __name__ == "__main__":
    main()

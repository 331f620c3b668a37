"""Wall time and per-step time of the reference trainer on shipped configs, side by side.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_train.py --data DATASET_DIR \
        --configs demo demo-harmonized

Trains each config into a temporary run directory (as `harmonia train` would) and prints a
markdown table: wall time of the whole run (dataset opening, training, periodic validation,
checkpoints, final save), the median training step (data wait included, validation excluded,
from the metrics' ``step_time``), the fraction of step time spent waiting for data, and the last
validation losses. Extra ``key=value`` overrides apply to every config (e.g. train.steps=100).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from harmonia.training.logging import read_metrics
from harmonia.training.loop import train_named


def measure(config: str, data: str | None, overrides: list[str]) -> dict[str, float | str]:
    """Train ``config`` once; return its timings and final validation losses."""
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        summary = train_named(
            config, Path(tmp) / "run", [*overrides, "train.progress=false"], data_dir=data
        )
        wall = time.perf_counter() - started
        rows = read_metrics(Path(tmp) / "run" / "metrics.jsonl")
    step_rows = [r for r in rows if r.get("step_time") is not None]
    final = summary["final_metrics"]
    return {
        "config": config,
        "steps": summary["steps"],
        "wall_s": wall,
        "step_ms": 1000 * statistics.median(r["step_time"] for r in step_rows),
        "data_wait": statistics.median(r["data_wait"] for r in step_rows),
        "val_va": final.get("val/loss/va", float("nan")),
        "val_vt": final.get("val/loss/vt", float("nan")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["demo", "demo-harmonized"])
    parser.add_argument("--data", default=None, help="dataset directory (default: data.dir)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = [measure(c, args.data, args.overrides) for c in args.configs]
    print(
        "| config | steps | wall time (s) | median step (ms) | data wait | val loss va | val loss vt |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(
            f"| {r['config']} | {r['steps']} | {r['wall_s']:.1f} | {r['step_ms']:.0f} | "
            f"{r['data_wait']:.0%} | {r['val_va']:.3f} | {r['val_vt']:.3f} |"
        )
    print(f"\n{torch.get_num_threads()} torch threads, torch {torch.__version__}")


if __name__ == "__main__":
    main()

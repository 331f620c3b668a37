"""Training-step throughput and peak memory: plain backward vs every Harmonizer space and method.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_step.py

For each model size and batch size, every variant runs forward + losses + backward (no optimizer
step, so the ratios show the whole cost of harmonization) on a synthetic batch of the dataset's
shapes (16x64x64 video, 2 s of audio, 4 captions). Variants are interleaved within each repeat,
with a rotating order (`bench_harmonizer.measure`); throughput is batch size / median CPU seconds
per step on one thread, the ratio is the median over repeats of the paired ratio to plain
backward (its interquartile range in brackets). Peak memory is the growth of the resident set
during one step (`harness.peak_rss_growth_mb`), measured once per variant after a warm-up step.
Prints markdown.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench_harmonizer import build, measure, variants
from harmonia.harmonization.methods import METHODS
from harness import machine_line, paired_ratios, peak_rss_growth_mb, ratio_cell, table

SPACES = ("embedding", "parameters", "batch")


def full_grid() -> list[tuple[str, str]]:
    """Every space with every method (batch space without ``none``, which equals plain)."""
    return [(s, m) for s in SPACES for m in METHODS if not (s == "batch" and m == "none")]


def bench(size: str, batch_size: int, repeats: int) -> str:
    """One markdown table: every variant's samples/s, ratio, peak memory growth and its ratio."""
    model, objective, batch = build(batch_size, size)
    steps = variants(model, objective, batch, torchjd=False, grid=full_grid())
    for step in steps.values():  # warm-up: first-call allocations and lazy initialisation
        step()
    memory = {}
    for name, step in steps.items():
        model.zero_grad(set_to_none=True)
        memory[name] = peak_rss_growth_mb(step)
    times = measure(steps, repeats, warmup=0, clock=time.process_time)
    ratios = paired_ratios(times, "plain backward")
    plain_mb = memory["plain backward"]
    rows = [
        [
            name,
            f"{batch_size / statistics.median(seconds):.1f}",
            ratio_cell(ratios[name]),
            f"{memory[name]:.0f}",
            f"{memory[name] / plain_mb:.2f}x",
        ]
        for name, seconds in times.items()
    ]
    header = ["variant", "samples/s", "speed vs plain (IQR)", "peak RSS growth MiB", "vs plain"]
    return f"**VATT {size}, B = {batch_size}, {repeats} interleaved repeats**\n\n" + table(
        header, rows
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--large-repeats", type=int, default=3, help="repeats for small at B >= 128 (slow on CPU)"
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{machine_line()}; CPU time per step; train mode, forward + backward\n")
    for size in args.sizes:
        for batch_size in args.batch_sizes:
            large = size != "tiny" and batch_size >= 128
            print(bench(size, batch_size, args.large_repeats if large else args.repeats))
            print(flush=True)


if __name__ == "__main__":
    main()

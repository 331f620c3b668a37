"""How the cost of harmonization grows with the batch size B and the number of losses M.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_scaling.py

VATT tiny, forward + losses + backward, PCGrad in each space against plain backward, interleaved
repeats (`bench_harmonizer.measure`), CPU time on one thread. The overhead is the median over
repeats of the paired difference (harmonized - plain) in ms per step; its ratio to the plain step
shows whether the cost grows faster than the step itself. Extra losses for M = 3, 4 repeat VATT's
two with another temperature (0.2): NCE(video, audio) and MIL-NCE(video, text) again, so every
loss shares the video anchor as in the paper. Prints markdown.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import torch

from bench_harmonizer import build, measure, variants
from harmonia.losses import ContrastiveObjective
from harmonia.losses.objective import LossSpec, default_specs
from harmonia.models import ModelConfig
from harness import machine_line, table

SPACES = ("embedding", "parameters", "batch")


def specs(m: int) -> tuple[LossSpec, ...]:
    """VATT's two losses, then copies at temperature 0.2 up to ``m`` losses (m <= 4)."""
    base = default_specs(ModelConfig.named("tiny"))
    extra = tuple(
        LossSpec(f"{s.name}2", s.kind, s.space, s.modalities, temperature=0.2) for s in base
    )
    if not 1 <= m <= len(base) + len(extra):
        raise ValueError(f"m must be in 1..{len(base) + len(extra)}")
    return (base + extra)[:m]


def overheads(batch_size: int, m: int, method: str, repeats: int) -> list[object]:
    """[B, M, plain ms, then per space: overhead ms and overhead / plain]."""
    model, _, batch = build(batch_size, "tiny")
    objective = ContrastiveObjective(specs(m))
    grid = [(space, method) for space in SPACES]
    times = measure(variants(model, objective, batch, False, grid), repeats, 1, time.process_time)
    plain = times["plain backward"]
    row: list[object] = [batch_size, m, f"{1e3 * statistics.median(plain):.0f}"]
    for space in SPACES:
        extra = statistics.median(
            h - p for h, p in zip(times[f"{space} {method}"], plain, strict=True)
        )
        row += [f"{1e3 * extra:.1f}", f"{extra / statistics.median(plain):+.0%}"]
    return row


def sweep(points: Sequence[tuple[int, int]], method: str, repeats: int) -> str:
    header = ["B", "M", "plain ms"]
    for space in SPACES:
        header += [f"{space} +ms", "+%"]
    return table(header, [overheads(b, m, method, repeats) for b, m in points])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--losses", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--losses-batch-size", type=int, default=64)
    parser.add_argument("--method", default="pcgrad")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{machine_line()}; CPU time per step; VATT tiny, {args.method}\n")
    print(f"**Cost vs batch size (M = 2), median of {args.repeats} interleaved repeats**\n")
    print(sweep([(b, 2) for b in args.batch_sizes], args.method, args.repeats), flush=True)
    b = args.losses_batch_size
    print(f"\n**Cost vs number of losses (B = {b}), median of {args.repeats} repeats**\n")
    print(sweep([(b, m) for m in args.losses], args.method, args.repeats), flush=True)


if __name__ == "__main__":
    main()

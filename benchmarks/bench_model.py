"""Parameter counts per model size and training-step time (forward + losses + backward).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_model.py --threads 2

Prints a markdown table (docs/model.md holds its output). The step is what the trainer does per
batch: the VATT forward on a synthetic batch of the dataset's shapes (uint8 16x64x64 video,
32,000 audio samples, K=4 captions) in training mode (DropToken on), both contrastive losses
and one backward. The median and the best of the timed steps are reported: on a shared machine
the best is the closer estimate of the unloaded speed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

from harmonia.losses import ContrastiveObjective, default_specs
from harmonia.models import VATT, ModelConfig, WordTokenizer
from harmonia.models.synthetic import WORDS, random_batch
from harness import cpu_name


def parameter_count(size: str, words: WordTokenizer) -> int:
    """Parameters of a named size (built on the meta device: no memory, no init cost)."""
    with torch.device("meta"):
        return VATT(ModelConfig.named(size), words).num_parameters()


def step_times(
    size: str, words: WordTokenizer, batch_size: int, warmup: int, steps: int
) -> dict[str, float]:
    """Milliseconds of forward alone and of forward + losses + backward (median and best)."""
    torch.manual_seed(0)
    model = VATT(ModelConfig.named(size), words).train()
    objective = ContrastiveObjective(default_specs(model.config))
    batch = random_batch(model.config, batch_size, captions=4)
    forward, full = [], []
    for i in range(warmup + steps):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        out = model(batch)
        middle = time.perf_counter()
        losses = objective(out)
        sum(v.mean() for v in losses.values()).backward()
        end = time.perf_counter()
        if i >= warmup:
            forward.append(middle - start)
            full.append(end - start)
    return {
        "forward_ms": 1e3 * statistics.median(forward),
        "step_ms": 1e3 * statistics.median(full),
        "best_step_ms": 1e3 * min(full),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"], help="sizes to time")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    words = WordTokenizer.build([" ".join(WORDS)])
    results: dict[str, Any] = {
        "machine": f"{cpu_name()}, torch {torch.__version__}, {args.threads} threads",
        "batch_size": args.batch_size,
        "sizes": {},
    }
    b = args.batch_size
    print(
        f"| size | parameters | forward ms (B={b}) | forward+backward ms (B={b}): median / best |"
    )
    print("| --- | ---: | ---: | ---: |")
    for size in ("tiny", "small", "base"):
        row: dict[str, Any] = {"parameters": parameter_count(size, words)}
        if size in args.sizes:
            row.update(step_times(size, words, args.batch_size, args.warmup, args.steps))
        results["sizes"][size] = row
        fwd = f"{row['forward_ms']:.0f}" if "forward_ms" in row else "-"
        step = f"{row['step_ms']:.0f} / {row['best_step_ms']:.0f}" if "step_ms" in row else "-"
        print(f"| {size} | {row['parameters']:,} | {fwd} | {step} |", flush=True)
    print(f"\n{results['machine']}; {args.steps} timed steps after {args.warmup} warm-up steps")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()

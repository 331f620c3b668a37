"""GPU benchmark in one command: VATT-Base training steps, bf16, torch.compile, MFU, harmonization.

    python benchmarks/gpu_bench.py                                 # a GPU machine, < 10 minutes
    python benchmarks/gpu_bench.py --device cpu --size tiny --steps 2   # smoke check (CPU)

A full training step (bf16 autocast forward, losses outside autocast, backward, AdamW step) on a synthetic batch of
the dataset's shapes, timed for plain backward and for the Harmonizer in each space. Plain and
embedding-space steps also run the model under ``torch.compile`` (``--compile auto``: on CUDA
only; a compile failure falls back to eager and says so); the parameters and batch spaces use the
eager model, since their capture hooks sit on its modules. Their overhead is measured against the
plain step run the same way. Variants are interleaved within each repeat and the median is
reported. Model FLOPs per step come from `torch.utils.flop_counter.FlopCounterMode` on one plain
step (forward + backward); model FLOPs utilization (MFU) is model FLOPs x steps/s over the card's
dense bf16 peak, looked up by device name or given with ``--peak-tflops``. Peak memory is
``torch.cuda.max_memory_allocated`` during one step (CPU: resident-set growth, see `harness`).
Prints markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench_harmonizer import measure
from harmonia.harmonization import Harmonizer
from harmonia.losses import ContrastiveObjective, default_specs
from harmonia.models import VATT, ModelConfig, WordTokenizer
from harmonia.models.synthetic import WORDS, random_batch
from harness import machine_line, peak_rss_growth_mb, table

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s.
PEAK_BF16_TFLOPS = {
    "B200": 2250.0,
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,
    "GH200": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
}
SPACES = ("embedding", "parameters", "batch")
Step = Callable[[], None]


def peak_tflops(device_name: str) -> float | None:
    """The table's peak for the longest key found as a whole word in the device's name."""
    hits = [k for k in PEAK_BF16_TFLOPS if re.search(rf"\b{re.escape(k)}\b", device_name)]
    return PEAK_BF16_TFLOPS[max(hits, key=len)] if hits else None


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class Bench:
    """A model, its objective and optimizer on one device, and training steps built on them."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.device = torch.device(args.device)
        torch.manual_seed(0)
        config = ModelConfig.named(args.size)
        self.model = VATT(config, WordTokenizer.build([" ".join(WORDS)])).to(self.device).train()
        self.objective = ContrastiveObjective(default_specs(config)).to(self.device)
        self.batch = to_device(random_batch(config, args.batch_size, seed=1), self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.dtype = torch.bfloat16 if args.dtype == "bf16" else None
        self.method = args.method

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def step(self, forward: Callable[..., Any], space: str | None) -> Step:
        """One training step; ``space=None`` is plain ``sum(losses).backward()``."""
        harmonizer = None if space is None else Harmonizer(self.method, space)
        encoder = self.model.anchor_encoder()

        def run() -> None:
            self.optimizer.zero_grad(set_to_none=True)
            capture = (
                contextlib.nullcontext() if harmonizer is None else harmonizer.capture(encoder)
            )
            with capture, self.autocast():
                out = forward(self.batch)
            losses = self.objective.reduce(self.objective(out), out)
            if harmonizer is None:
                torch.stack(list(losses.values())).sum().backward()
            else:
                harmonizer.backward(losses, out.anchor)
            self.optimizer.step()
            self.sync()

        return run

    def model_flops(self) -> int:
        """FLOPs of one plain forward + backward (no optimizer step)."""
        self.optimizer.zero_grad(set_to_none=True)
        with FlopCounterMode(display=False) as counter:
            with self.autocast():
                out = self.model(self.batch)
            losses = self.objective.reduce(self.objective(out), out)
            torch.stack(list(losses.values())).sum().backward()
        return int(counter.get_total_flops())

    def peak_memory_mib(self, step: Step) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type != "cuda":
            return peak_rss_growth_mb(step)
        torch.cuda.reset_peak_memory_stats(self.device)
        step()
        return torch.cuda.max_memory_allocated(self.device) / 2**20


def compiled_forward(bench: Bench, mode: str) -> tuple[Callable[..., Any] | None, str]:
    """The compiled model (after one trial step) or None, with a note on what happened."""
    if mode == "off" or (mode == "auto" and bench.device.type != "cuda"):
        return None, f"torch.compile off ({mode})"
    compiled = torch.compile(bench.model)
    try:
        started = time.perf_counter()
        bench.step(compiled, None)()
        return compiled, f"torch.compile on (first step {time.perf_counter() - started:.0f} s)"
    except Exception as err:  # any backend failure: report it, measure eager
        return None, f"torch.compile failed, eager only ({type(err).__name__}: {err})"[:300]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", default="base", choices=["tiny", "small", "base"])
    parser.add_argument("--batch-size", type=int, help="default 256 on CUDA, 4 on CPU")
    parser.add_argument("--steps", type=int, default=20, help="timed repeats per variant")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--compile", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--method", default="pcgrad")
    parser.add_argument("--spaces", nargs="+", default=list(SPACES), choices=SPACES)
    parser.add_argument("--peak-tflops", type=float, help="the device's peak (default: table)")
    args = parser.parse_args(argv)
    if args.batch_size is None:
        args.batch_size = 256 if args.device.startswith("cuda") else 4
    bench = Bench(args)
    if bench.device.type == "cuda":
        name = torch.cuda.get_device_name(bench.device)
        torch.backends.cuda.matmul.allow_tf32 = True
    else:
        name = machine_line()
    peak = args.peak_tflops or (peak_tflops(name) if bench.device.type == "cuda" else None)
    compiled, compile_note = compiled_forward(bench, args.compile)
    eager: Callable[..., Any] = bench.model
    steps: dict[str, Step] = {"plain, eager": bench.step(eager, None)}
    if compiled is not None:
        steps["plain, compiled"] = bench.step(compiled, None)
    for space in args.spaces:
        use_compiled = compiled is not None and space == "embedding"
        forward = compiled if use_compiled and compiled is not None else eager
        steps[f"{space} {args.method}, {'compiled' if use_compiled else 'eager'}"] = bench.step(
            forward, space
        )
    flops = bench.model_flops()
    memory = {n: bench.peak_memory_mib(s) for n, s in steps.items()}
    times = measure(steps, args.steps, args.warmup, time.perf_counter)
    median = {n: statistics.median(t) for n, t in times.items()}
    rows = []
    for n, seconds in median.items():
        base = median["plain, compiled" if n.endswith("compiled") else "plain, eager"]
        mfu = f"{flops / seconds / (peak * 1e12):.1%}" if peak else "n/a"
        rows.append(
            [
                n,
                f"{args.batch_size / seconds:.1f}",
                f"{1e3 * seconds:.1f}",
                f"{seconds / base - 1:+.0%}",
                mfu,
                f"{memory[n]:.0f}",
            ]
        )
    print(
        f"**{name}**: VATT {args.size}, B = {args.batch_size}, {args.dtype}, "
        f"{compile_note}; {flops / 1e12:.3f} TFLOP per plain step (forward + backward); "
        f"peak {peak if peak else 'unknown'} TFLOP/s; median of {args.steps} interleaved "
        f"repeats after {args.warmup} warm-up steps; torch {torch.__version__}\n"
    )
    memory_label = "peak MiB (allocated)" if bench.device.type == "cuda" else "RSS growth MiB"
    header = ["variant", "samples/s", "ms/step", "time vs plain", "MFU", memory_label]
    print(table(header, rows), flush=True)


if __name__ == "__main__":
    main()

"""glibc's default allocator against `harmonia.keep_freed_memory`, on the same training steps.

The setting is per process, so each repeat starts two fresh processes, one per setting (the
order alternates from one repeat to the next). Each times plain backward and a ``parameters``
PCGrad step of one workload, interleaved after a warm-up, and reports per step the median CPU
time, minor page faults and, after the last step, the resident set (``VmRSS``) and its
high-water mark (``VmHWM``). The table gives, per workload, batch size and setting, the medians
over repeats (the ratio is the median of each process's plain / parameters time).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_allocator.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

SETTINGS = ("default", "keep_freed_memory")
VARIANTS = ("plain backward", "parameters pcgrad")
_ENV_CHOICES = ("MALLOC_", "GLIBC_TUNABLES")
"""Settings of the parent's environment that would override both arms alike: not passed on."""


def one_process(setting: str, workload: str, batch_size: int, steps: int) -> dict[str, object]:
    """Times, faults and resident memory of ``steps`` interleaved steps of each variant."""
    import torch

    from harmonia.allocator import keep_freed_memory
    from harness import status_kb

    if setting == "keep_freed_memory" and not keep_freed_memory():
        raise SystemExit("keep_freed_memory() changed nothing here (not glibc?)")
    torch.set_num_threads(1)
    if workload == "vatt":
        import bench_harmonizer

        model, objective, batch = bench_harmonizer.build(batch_size, "tiny")
        step = bench_harmonizer.variants(model, objective, batch, False, [("parameters", "pcgrad")])
    else:
        import torch_transformer

        tri, inputs = torch_transformer.build(batch_size)
        step = torch_transformer.steps(tri, inputs, [("parameters", "pcgrad")])
    for name in VARIANTS:
        step[name]()
    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    faults: dict[str, list[int]] = {name: [] for name in VARIANTS}
    for repeat in range(steps):
        for name in VARIANTS if repeat % 2 == 0 else VARIANTS[::-1]:
            before, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time()
            step[name]()
            seconds[name].append(time.process_time() - start)
            faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return {
        "ms": {n: 1000 * statistics.median(v) for n, v in seconds.items()},
        "faults": {n: statistics.median(v) for n, v in faults.items()},
        "rss_mib": status_kb("VmRSS") / 1024,
        "hwm_mib": status_kb("VmHWM") / 1024,
    }


def row_of(result: dict[str, Any]) -> list[float]:
    """One process's table row: times, paired ratio, faults, resident memory."""
    ms, faults = result["ms"], result["faults"]
    return [
        ms["plain backward"],
        ms["parameters pcgrad"],
        ms["plain backward"] / ms["parameters pcgrad"],
        faults["plain backward"],
        faults["parameters pcgrad"],
        result["rss_mib"],
        result["hwm_mib"],
    ]


def spawn(setting: str, workload: str, batch_size: int, steps: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_ENV_CHOICES)}
    command = [sys.executable, __file__, "--child", setting, "--workloads", workload]
    command += ["--batch-sizes", str(batch_size), "--steps", str(steps)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--workloads", nargs="+", choices=["vatt", "torch-transformer"], default=["vatt"]
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant and process")
    parser.add_argument("--repeats", type=int, default=5, help="processes per setting")
    parser.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = one_process(args.child, args.workloads[0], args.batch_sizes[0], args.steps)
        print(json.dumps(result))
        return
    from harness import machine_line, table

    print(machine_line())
    print(
        f"1 thread, {args.steps} steps per variant after a warm-up, median over {args.repeats} "
        "processes per setting"
    )
    rows = []
    for workload in args.workloads:
        for batch_size in args.batch_sizes:
            runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SETTINGS}
            for repeat in range(args.repeats):
                for setting in SETTINGS if repeat % 2 == 0 else SETTINGS[::-1]:
                    runs[setting].append(spawn(setting, workload, batch_size, args.steps))
            for setting, results in runs.items():
                columns = zip(*(row_of(r) for r in results), strict=True)
                medians = [statistics.median(column) for column in columns]
                cells = [f"{m:.2f}x" if i == 2 else f"{m:.0f}" for i, m in enumerate(medians)]
                rows.append([workload, str(batch_size), setting, *cells])
    header = ["workload", "B", "allocator", "plain ms", "parameters ms", "ratio", "faults plain"]
    header += ["faults parameters", "RSS after MiB", "peak RSS MiB"]
    print(table(header, rows))


if __name__ == "__main__":
    main()

"""benchmarks/bench_allocator.py: a tiny run reports both allocator settings with their faults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_a_tiny_run_reports_both_settings_of_each_workload() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(BENCHMARKS / "bench_allocator.py"), "--batch-sizes", "4"]
    command += ["--workloads", "vatt", "torch-transformer", "--steps", "2", "--repeats", "1"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [line.strip("| ").split(" | ") for line in done.stdout.splitlines()[4:]]
    assert [(r[0], r[2]) for r in rows] == [
        (workload, setting)
        for workload in ("vatt", "torch-transformer")
        for setting in ("default", "keep_freed_memory")
    ]
    for row in rows:
        plain, parameters, ratio = float(row[3]), float(row[4]), float(row[5].rstrip("x"))
        assert plain > 0 and parameters > 0
        # one process per setting: the ratio is its two medians', printed rounded to 1 ms
        assert (plain - 0.5) / (parameters + 0.5) - 0.005 <= ratio
        assert ratio <= (plain + 0.5) / max(parameters - 0.5, 0.5) + 0.005
        assert float(row[9]) >= float(row[8]) > 0  # the peak is at least what is resident after

"""benchmarks/gpu_bench.py: the CPU smoke run a GPU machine's command is checked with, and its
peak-FLOPs lookup by device name."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_cpu_smoke_run_reports_every_space() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(BENCHMARKS / "gpu_bench.py")]
    command += ["--device", "cpu", "--size", "tiny", "--steps", "2"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    flops = re.search(r"([0-9.]+) TFLOP per plain step", done.stdout)
    assert flops is not None and float(flops.group(1)) > 0
    rows = {
        cells[0]: cells[1:]
        for line in done.stdout.splitlines()
        if line.startswith("| ") and not line.startswith("| ---")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    names = ["plain, eager"] + [f"{s} pcgrad, eager" for s in ("embedding", "parameters", "batch")]
    assert set(names) <= set(rows)
    for name in names:
        samples_per_s, ms_per_step = float(rows[name][0]), float(rows[name][1])
        assert samples_per_s > 0 and ms_per_step > 0
        assert samples_per_s == pytest.approx(4 / (ms_per_step / 1e3), rel=0.01)


def test_peak_lookup_takes_the_longest_whole_word_match() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from gpu_bench import peak_tflops
    finally:
        sys.path.remove(str(BENCHMARKS))
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops("NVIDIA H200") == 989.0
    assert peak_tflops("NVIDIA A10G") is None
    assert peak_tflops("NVIDIA L40S") == 362.0

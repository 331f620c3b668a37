"""benchmarks/bench_harmonizer.py: a tiny run of every workload reports every variant, the floor
and the pieces of a step."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_a_tiny_run_reports_every_variant_the_floor_and_the_breakdown() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(BENCHMARKS / "bench_harmonizer.py"), "--workload", "all"]
    command += ["--batch-sizes", "4", "--repeats", "2", "--warmup", "0", "--no-torchjd"]
    command += ["--breakdown"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    tables = done.stdout.split("\n\n")
    ratios = [t for t in tables if "IQR of ratio" in t]
    titles = [t.strip().splitlines()[0] for t in ratios]
    assert titles == [
        "VATT tiny, B=4",
        "VATT tiny, raw-signal patches, B=4",
        "tri-modal nn.TransformerEncoder, B=4",
    ]
    for table in ratios:
        rows = {
            m.group(1).strip(): float(m.group(2))
            for m in re.finditer(r"^(.+?)\s+[0-9.]+\s+([0-9.]+)x", table, re.MULTILINE)
        }
        assert rows["plain backward"] == 1.0
        assert {
            "floor: plain + M-1 passes",
            "floor with weight grads",
            "parameters pcgrad",
            "embedding none",
        } <= set(rows)
        assert all(r > 0 for r in rows.values())
    pieces = [t for t in tables if "pieces of one step" in t]
    assert len(pieces) == 3
    for table in pieces:
        assert "backward passes to layer outputs" in table and "final backward" in table
        assert "peak MiB" in table

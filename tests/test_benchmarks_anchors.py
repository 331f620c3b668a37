"""benchmarks/bench_anchors.py: a tiny run times harmonia beside plain backward on every model,
torchjd's autogram where it can run and Opacus (when installed) on the modality-specific ones."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from bench_anchors import MODELS  # noqa: E402


def test_a_tiny_run_reports_each_route_on_the_models_it_supports() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(BENCHMARKS / "bench_anchors.py"), "--batch-sizes", "4"]
    command += ["--repeats", "2", "--warmup", "0", "--keep-freed-memory"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "keep_freed_memory allocator" in done.stdout.splitlines()[0]
    tables = {
        t.strip().splitlines()[0]: t for t in done.stdout.split("\n\n") if "IQR of ratio" in t
    }
    assert list(tables) == [f"B=4, {title} (ratios to its plain backward)" for title in MODELS]
    with_opacus = importlib.util.find_spec("opacus") is not None
    if not with_opacus:
        assert "opacus is not installed" in done.stdout
    for header, table in tables.items():
        rows = {
            m.group(1).strip(): float(m.group(2))
            for m in re.finditer(r"^(.+?)\s+[0-9.]+\s+([0-9.]+)x", table, re.MULTILINE)
        }
        assert rows["plain backward"] == 1.0 and rows["harmonia parameters pcgrad"] > 0
        specific = "modality-specific" in header
        linear = "linear video patches" in header or "raw-signal patches" in header
        # torchjd's autogram runs on modality-specific models without the conv stem only
        assert ("torchjd autogram + pcgrad" in rows) == (specific and linear), header
        assert ("opacus 1 loss + backward" in rows) == (specific and with_opacus), header

"""The README's Harmonizer example runs as written, and its claims about it hold."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 1, "the README has one Python example"
    return blocks[0]


def test_the_readme_example_runs_as_written() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _example()], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "conflict/va~vt/fraction" in done.stdout  # the metrics it says it prints

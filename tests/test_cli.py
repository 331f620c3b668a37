"""The command line's contract: help works, user errors are one line with exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harmonia.cli import main


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "harmonia" in capsys.readouterr().out


def test_module_entry_point_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "harmonia", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("harmonia ")

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


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bogus"], "harmonia: error: unrecognized arguments: --bogus"),
        (["nocommand"], "harmonia: error: argument COMMAND: invalid choice: 'nocommand'"),
        (["train", "demo"], "harmonia train: error: the following arguments are required: --out"),
        (["data", "info"], "harmonia data info: error: the following arguments are required"),
    ],
)
def test_bad_arguments_are_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2
    assert len(lines) == 1 and lines[0].startswith(message), lines

"""`harmonia data ...` and `harmonia demo`: results, and user errors as one line with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harmonia.cli import main
from harmonia.data import load_summary

SMALL = ["--train", "8", "--val", "4", "--test", "4", "--workers", "1", "--quiet"]


def _source_args(real_source_dir: Path | None) -> list[str]:
    return ["--source", str(real_source_dir) if real_source_dir else "builtin"]


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_build_info_verify(
    tmp_path: Path, real_source_dir: Path | None, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ds"
    args = ["data", "build", "--out", str(out), *_source_args(real_source_dir), *SMALL]
    assert main([*args, "--noise", "0.5", "--seed", "7"]) == 0
    printed = capsys.readouterr().out
    summary = load_summary(out)
    assert summary["checksum"] in printed and summary["build"]["options"]["seed"] == 7
    assert main(["data", "info", str(out)]) == 0
    assert summary["checksum"] in capsys.readouterr().out
    assert main(["data", "info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == summary
    assert main(["data", "verify", str(out)]) == 0
    capsys.readouterr()
    shard = out / summary["splits"]["val"]["shards"][0]
    data = bytearray(shard.read_bytes())
    data[2000] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert main(["data", "verify", str(out)]) == 1
    assert "SHA-256 differs" in capsys.readouterr().out
    assert main(args) == 2  # exists, no --overwrite
    assert "already exists" in _one_line_error(capsys)
    assert main([*args, "--overwrite", "--seed", "7", "--noise", "0.5"]) == 0
    assert load_summary(out)["checksum"] == summary["checksum"]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--noise", "1.5"], "--noise"),
        (["--noise-mix", "1,2"], "--noise-mix"),
        (["--frames", "0"], "frames"),
        (["--size", "63"], "height"),
        (["--sample-rate", "12345"], "sample_rate"),
        (["--captions", "0"], "captions"),
        (["--extra", "-3"], "--extra"),
        (["--split", "dev"], "--split"),
        (["--noise", "lots"], "--noise"),
    ],
)
def test_invalid_option_is_one_line_exit_2(
    extra: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["data", "build", "--out", str(tmp_path / "x"), "--source", "builtin", *extra]
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's own type errors
        code = int(exc.code or 0)
    assert code == 2
    assert needle in _one_line_error(capsys)
    assert not (tmp_path / "x").exists()


def test_missing_source_names_what_and_where(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = ["--out", str(tmp_path / "x")]
    assert main(["data", "build", *out, "--source", str(tmp_path / "nowhere")]) == 2
    assert "nowhere (from --source) does not exist" in _one_line_error(capsys)
    (tmp_path / "src" / "mnist").mkdir(parents=True)
    assert main(["data", "build", *out, "--source", str(tmp_path / "src")]) == 2
    err = _one_line_error(capsys)
    assert "MNIST images not found" in err and str(tmp_path / "src" / "mnist") in err


def test_process_exit_code_without_traceback(tmp_path: Path) -> None:
    """The real console entry point: exit status 2 and a single stderr line."""
    env = {**os.environ, "HARMONIA_DATA": str(tmp_path / "gone")}
    proc = subprocess.run(
        [sys.executable, "-m", "harmonia", "data", "build", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "HARMONIA_DATA" in proc.stderr


def test_info_on_a_non_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "info", str(tmp_path)]) == 2
    assert "summary.json not found" in _one_line_error(capsys)


def test_demo_builds_once_then_reuses(
    tmp_path: Path, real_source_dir: Path | None, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "demo"
    args = ["demo", "--run-dir", str(run_dir), "--data-only"]
    args += [*_source_args(real_source_dir), *SMALL[:-1]]
    assert main(args) == 0
    first = capsys.readouterr()
    summary = load_summary(run_dir / "data")
    assert summary["samples"] == 16 and summary["checksum"] in first.out
    assert main(args) == 0
    again = capsys.readouterr().out
    assert "using the dataset already in" in again and summary["checksum"] in again


def test_demo_falls_back_to_builtin_loudly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HARMONIA_DATA", raising=False)
    monkeypatch.setenv("HARMONIA_CACHE", str(tmp_path / "no-cache"))
    assert main(["demo", "--run-dir", str(tmp_path / "d"), "--data-only", *SMALL[:-1]]) == 0
    err = capsys.readouterr().err
    assert "BUILT-IN" in err and "NOT speech" in err
    assert load_summary(tmp_path / "d" / "data")["build"]["source"]["kind"] == "builtin"

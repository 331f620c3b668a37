"""`harmonia train`: one-line errors with exit code 2, and SIGTERM -> checkpoint + exit 0."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from harmonia.cli import main
from harmonia.models import VATT
from harmonia.training.checkpoint import latest_checkpoint, load_checkpoint
from harmonia.training.logging import read_metrics
from harmonia.training.loop import train_named
from launch import harmonia_process

SMALL = ["data.batch_size=8", "eval.batch_size=16", "train.eval_every=0"]


def harmonia(*args: str) -> subprocess.Popen[str]:
    return harmonia_process(args, {**os.environ, "OMP_NUM_THREADS": "1"}, new_session=True)


def test_config_error_is_one_line_exit_2(tmp_path: Path, tiny_dataset: Path) -> None:
    proc = harmonia(
        "train", "demo", "--out", str(tmp_path / "run"), "--data", str(tiny_dataset),
        "harmonize.methdo=pcgrad",
    )  # fmt: skip
    stdout, err = proc.communicate(timeout=120)
    assert stdout == ""
    assert proc.returncode == 2
    assert err.strip().splitlines() == [
        "harmonia: error: unknown key 'harmonize.methdo' (did you mean 'harmonize.method'?)"
    ]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "{missing}"], "no dataset at {missing}"),
        (["optim.lr=-1"], "optim.lr: expected a finite positive float, got -1"),
    ],
)
def test_user_errors_are_one_line(
    tmp_path: Path,
    tiny_dataset: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    out, missing = tmp_path / "run", tmp_path / "missing"
    args = [a.format(missing=missing) for a in args]
    data = [] if "--data" in args else ["--data", str(tiny_dataset)]
    code = main(["train", "demo", "--out", str(out), *data, *args, *SMALL])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1
    assert lines[0].startswith(f"harmonia: error: {message.format(missing=missing, out=out)}")


def test_cli_trains_and_reports(
    tmp_path: Path, tiny_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["train", "demo", "--out", str(out), "--data", str(tiny_dataset), "--no-progress"]
    assert main([*argv, "train.steps=2", *SMALL]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("finished after 2 steps in ") and str(out) in printed
    assert '"val/R@1/vt/video->text"' in printed


@pytest.mark.parametrize("target", ["process", "group"])
def test_sigterm_writes_a_checkpoint_and_exits_0(
    tmp_path: Path, tiny_dataset: Path, target: str
) -> None:
    """SIGTERM to the trainer alone, or to its group (its DataLoader workers too, as a batch
    scheduler does): the step finishes, a checkpoint is written, the exit code is 0."""
    out = tmp_path / "run"
    proc = harmonia(
        "train", "demo", "--out", str(out), "--data", str(tiny_dataset), "--no-progress",
        "train.steps=100000", "train.log_every=1", "train.checkpoint_every=100000",
        "data.num_workers=2", *SMALL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while len(read_metrics(out / "metrics.jsonl")) < 2:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.2)
    if target == "group":
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "SIGTERM: checkpoint of step" in stderr + stdout
    assert "stopped by SIGTERM after" in stdout

    path = latest_checkpoint(out)
    assert path is not None
    checkpoint = load_checkpoint(path)
    stopped_at = checkpoint.step
    assert stopped_at >= 2
    VATT.from_pretrained(path)
    assert not (out / "model").exists()  # an interrupted run has no final model yet

    summary = train_named(
        "demo",
        out,
        [*SMALL, f"train.steps={stopped_at + 1}", "data.num_workers=2", "train.progress=false"],
        data_dir=tiny_dataset,
        resume=True,
    )
    assert summary["status"] == "finished" and summary["steps"] == stopped_at + 1
    assert (out / "model" / "model.safetensors").is_file()

"""Disk full and unwritable output: a one-line error (exit 2, no traceback), nothing half
written, the previous checkpoint intact, and the run resumes once there is room.

A full disk is real where it matters: a child process whose file-size limit (RLIMIT_FSIZE)
drops after its second checkpoint, so torch.save (default suite) and safetensors (slow test) fail
inside their own writers (`faults` fault ``fsize``). Smaller files and a path below a regular file are simulated
in-process (``Path.write_text`` raising ENOSPC; ``--out`` under a file).
"""

from __future__ import annotations

import errno
import pathlib
import re
from pathlib import Path
from typing import Any

import pytest

from fault_child import plain_name
from faults import (
    TINY_RUN,
    finish,
    readable_checkpoints,
    record,
    start,
    torch_threads,
)
from harmonia.cli import main
from harmonia.training.checkpoint import checkpoint_dir, latest_checkpoint
from harmonia.training.config import load_train_config
from harmonia.training.loop import train

RUN = [*TINY_RUN, "train.checkpoint_every=1", "train.keep_last=2", "train.steps=4"]


def argv(run: Path, data: Path) -> list[str]:
    return ["train", "demo", "--out", str(run), "--data", str(data), "--no-progress", *RUN]


def resume(run: Path, data: Path) -> dict[str, Any]:
    with torch_threads(1):
        return train(load_train_config("demo", RUN), run, data_dir=data, resume=True)


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(
    ("limit", "failing"),
    [
        pytest.param(64 * 1024, "safetensors", marks=pytest.mark.slow),
        (1_200_000, "torch.save"),
    ],
    ids=["model-weights", "training-state"],
)
def test_disk_full_at_a_checkpoint(
    tmp_path: Path, tiny_dataset: Path, limit: int, failing: str
) -> None:
    """The weights (0.7 MB) or the optimizer state (2.1 MB) of checkpoint 3 do not fit."""
    run = tmp_path / "run"
    code, _, err = finish(start(argv(run, tiny_dataset), f"fsize:{limit}:2"))
    line = one_line(err)
    assert code == 2
    assert line.startswith(f"harmonia: error: cannot write checkpoint {checkpoint_dir(run, 3)} (")
    assert f"the previous checkpoint {checkpoint_dir(run, 2)} is intact" in line
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step-00000001",
        "step-00000002",
    ]  # no half-written checkpoint, not even a hidden one
    assert readable_checkpoints(run) == [1, 2]
    assert not (run / "model").exists()
    summary = resume(run, tiny_dataset)
    assert summary["status"] == "finished" and summary["steps"] == 4
    sizes = {f.name: f.stat().st_size for f in checkpoint_dir(run, 4).iterdir()}
    if failing == "safetensors":  # the limit hit the first large file: the weights
        assert limit < sizes["model.safetensors"]
    else:
        assert sizes["model.safetensors"] < limit < sizes["state.pt"]
    record(f"disk_full_{failing}", error=line)


def no_space_for(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """``Path.write_text`` of files called ``name`` (or their temporary twins) fails as on a
    full disk."""
    real = pathlib.Path.write_text

    def write_text(self: Path, *args: Any, **kwargs: Any) -> int:
        if plain_name(self) == name:
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", write_text)


def test_disk_full_when_the_run_starts(
    tmp_path: Path,
    tiny_dataset: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "run"
    no_space_for(monkeypatch, "config.yaml")
    assert main(argv(run, tiny_dataset)) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"harmonia: error: training stopped: {run}/")
    assert re.search(r"config\.yaml(\.tmp)?: No space left on device; no checkpoint yet$", line)
    assert latest_checkpoint(run) is None


def test_disk_full_in_a_checkpoint_manifest(
    tmp_path: Path,
    tiny_dataset: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "run"
    no_space_for(monkeypatch, "manifest.json")
    assert main(argv(run, tiny_dataset)) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"harmonia: error: cannot write checkpoint {checkpoint_dir(run, 1)} (")
    assert "No space left on device" in line and "no earlier checkpoint" in line
    assert not any((run / "checkpoints").iterdir())


def test_disk_full_at_the_end_keeps_the_final_checkpoint(
    tmp_path: Path,
    tiny_dataset: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "run"
    no_space_for(monkeypatch, "summary.json")
    assert main(argv(run, tiny_dataset)) == 2
    final = checkpoint_dir(run, 4)
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"harmonia: error: training stopped: {run}/")
    assert re.search(r"summary\.json(\.tmp)?: No space left on device; newest checkpoint: ", line)
    assert line.endswith(f"{final} (resume with --resume)")
    assert readable_checkpoints(run) == [3, 4]
    monkeypatch.undo()
    summary = resume(run, tiny_dataset)
    assert summary["status"] == "finished" and (run / "summary.json").is_file()


@pytest.mark.parametrize("where", ["below a file", "is a file"])
def test_unwritable_output_is_one_line(
    tmp_path: Path, tiny_dataset: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    run = blocker / "run" if where == "below a file" else blocker
    assert main(argv(run, tiny_dataset)) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("harmonia: error: training stopped: ") and str(run) in line
    assert blocker.read_text() == "not a directory"

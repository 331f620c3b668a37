"""Hostile input, loader side: a failing or killed loader worker ends the run, never hangs (D1)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from torch.utils.data import Dataset

from harmonia.training.batches import BatchStream, EpochSampler, LoaderFailure


class _Raises(Dataset[torch.Tensor]):
    """Sample 5 raises an error no skip record covers."""

    ids: ClassVar[list[str]] = [f"sample-{i}" for i in range(16)]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> torch.Tensor:
        if index == 5:
            raise ValueError("Exceeds the limit (4300 digits) for integer string conversion")
        return torch.zeros(2)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_sample_that_raises_stops_the_stream_naming_it(workers: int) -> None:
    stream = BatchStream(
        _Raises(), EpochSampler(16, 0), batch_size=4, collate_fn=torch.stack, num_workers=workers
    )
    started = time.monotonic()
    with pytest.raises(LoaderFailure) as caught:
        for _ in range(8):
            next(stream)
    message = str(caught.value)
    assert "\n" not in message and "sample sample-5: ValueError: Exceeds the limit" in message
    assert time.monotonic() - started < 30
    assert multiprocessing.active_children() == []  # the workers are gone, nothing to wait for


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.is_file() else []


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc to find workers")
def test_a_killed_worker_ends_the_run_with_one_line_and_a_checkpoint(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    command = [
        sys.executable, "-m", "harmonia", "train", "demo", "--out", str(run),
        "--data", str(tiny_dataset), "--no-progress", "train.steps=100000", "data.batch_size=8",
        "data.num_workers=2", "train.log_every=1", "train.checkpoint_every=100000",
        "train.eval_every=0",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    metrics = run / "metrics.jsonl"
    err = b""
    try:
        # An epoch of the tiny dataset is 6 steps and each epoch starts new workers, so a kill
        # can land on a worker that is already shutting down, which rightly ends nothing: then
        # the next epoch's workers are killed, up to 5 times. A run that ignores dead workers
        # fails all 5.
        for _ in range(5):
            deadline = time.monotonic() + 240
            while not (metrics.is_file() and metrics.read_text()) or len(_children(proc.pid)) < 2:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "training never started"
                time.sleep(0.2)
            os.kill(_children(proc.pid)[0], signal.SIGKILL)  # as the OOM killer would
            try:
                _, err = proc.communicate(timeout=30)  # a hang fails below
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            pytest.fail("5 killed workers did not stop the run")
    finally:
        if proc.poll() is None:
            proc.kill()
    text = err.decode()
    assert proc.returncode == 2, text
    assert "Traceback" not in text
    assert "data loading failed" in text and "exited unexpectedly" in text
    assert "checkpoint of step" in text and (run / "checkpoints").is_dir()

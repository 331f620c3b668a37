"""Multi-process faults: one rank killed or hung -> the others stop promptly with a message
naming the failure (no hang); the restart resumes from the last checkpoint exactly.

`harmonia train` is not launched under torchrun yet, so these runs are small DDP trainings
written with harmonia.training.distributed (`fault_child.ddp_main`: DistributedContext over gloo,
wrap_model, a collective per step, rank 0 writing a checkpoint per step with harmonia's
checkpoint module). Under torchrun a killed rank makes the agent stop the survivor and name the
failed rank; the restart finishes bit-identical to the one-process computation of the same
two-rank run. Without an agent (processes launched by hand, as by a batch system), a survivor
waiting on a hung peer fails after DistributedContext's ``timeout_s``, and a killed peer fails it
at once (slow tests).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fault_child import ddp_reference
from faults import CHILD, child_env, record, torch_threads
from harmonia.training.checkpoint import latest_checkpoint
from launch import free_port, rank_env, reaping, torchrun_command

STEPS = 6
DIE_AT = 4


def torchrun(out: Path, *extra: str) -> subprocess.Popen[str]:
    command = torchrun_command(2, str(CHILD), "ddp", str(out), str(STEPS), *extra)
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env()
    )


def by_hand(out: Path, *extra: str) -> list[subprocess.Popen[str]]:
    """The two ranks started directly with torchrun's environment variables, no agent."""
    port = free_port()
    procs = []
    for rank in range(2):
        env = rank_env(child_env(), rank, 2, port)
        command = [sys.executable, str(CHILD), "ddp", str(out), str(STEPS), *extra]
        procs.append(
            subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
            )
        )
    return procs


def wait_for_line(proc: subprocess.Popen[str], text: str, timeout: float = 240) -> float:
    """Read the child's stdout until a line containing ``text``; when it came."""
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    for line in proc.stdout:
        if text in line:
            return time.monotonic()
        assert time.monotonic() < deadline, f"no {text!r} in {timeout} s"
    raise AssertionError(f"the child ended without printing {text!r}: {proc.communicate()}")


def test_a_killed_rank_stops_the_run_and_the_restart_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    proc = torchrun(out, "--die", f"1:{DIE_AT}:kill")
    killed = wait_for_line(proc, f"rank 1: kill at step {DIE_AT}")
    _, err = proc.communicate(timeout=120)
    stopped_after = time.monotonic() - killed
    assert proc.returncode != 0
    assert stopped_after < 60, stopped_after  # the group timeout is 600 s: no waiting on it
    root_cause = err[err.index("Root Cause") :]
    assert re.search(r"rank\s*:\s*1\b", root_cause) and "SIGKILL" in root_cause, err[-2000:]
    last = latest_checkpoint(out)
    assert last is not None and last.name == f"step-{DIE_AT - 1:08d}"

    restart = torchrun(out)
    _, err = restart.communicate(timeout=300)
    assert restart.returncode == 0, err[-3000:]
    with torch_threads(1):
        want = ddp_reference(STEPS)
    got = load_file(out / "final.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    record("rank_killed_torchrun", stopped_after_s=round(stopped_after, 1), resumed_from=DIE_AT - 1)


@pytest.mark.parametrize(
    ("how", "timeout", "message"),
    [
        pytest.param("stop", 5, "Timed out", marks=pytest.mark.slow),
        pytest.param("kill", 600, "Connection", marks=pytest.mark.slow),
    ],
    ids=["hung-peer-times-out", "killed-peer-fails-at-once"],
)
def test_without_an_agent_the_survivor_does_not_hang(
    tmp_path: Path, how: str, timeout: int, message: str
) -> None:
    procs = by_hand(tmp_path, "--die", f"1:{DIE_AT}:{how}", "--timeout", str(timeout))
    with reaping(procs):
        died = wait_for_line(procs[1], f"rank 1: {how} at step {DIE_AT}")
        _, err = procs[0].communicate(timeout=120)
        waited = time.monotonic() - died
    assert procs[0].returncode != 0
    assert message in err, err[-2000:]
    if how == "stop":
        assert timeout - 1 <= waited < timeout + 60, waited
    else:
        assert waited < 60, waited
    record(f"rank_{how}_no_agent", survivor_exit_s=round(waited, 1), group_timeout_s=timeout)
    assert latest_checkpoint(tmp_path) is not None

"""Starting multi-process runs from tests: torchrun command lines, free ports, child processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    """A TCP port nobody listens on right now (for MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun_command(nproc: int, *program: str) -> list[str]:
    """``torchrun --nproc-per-node NPROC PROGRAM...`` on a free local port, without restarts."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "--max-restarts", "0",
        "--monitor-interval", "0.2", *program,
    ]  # fmt: skip


def harmonia_torchrun(
    nproc: int, args: Sequence[str], env: dict[str, str], *, new_session: bool = False
) -> subprocess.Popen[str]:
    """``torchrun ... -m harmonia ARGS`` in the background, output captured; ``new_session``
    puts it in its own process group (to signal the whole group, as a batch system does)."""
    return subprocess.Popen(
        torchrun_command(nproc, "-m", "harmonia", *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=new_session,
    )


def harmonia_process(
    args: Sequence[str], env: dict[str, str], *, new_session: bool = False
) -> subprocess.Popen[str]:
    """``python -m harmonia ARGS`` in the background, output captured (``new_session``: in its
    own process group, for a signal to the whole group)."""
    return subprocess.Popen(
        [sys.executable, "-m", "harmonia", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=new_session,
    )


def rank_env(base: dict[str, str], rank: int, world_size: int, port: int) -> dict[str, str]:
    """The variables torchrun would export for ``rank`` (to start ranks by hand, no agent)."""
    env = {**base, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size)}
    return {**env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


@contextmanager
def reaping(procs: Sequence[subprocess.Popen[str]]) -> Iterator[None]:
    """Kill and wait for ``procs`` when the block ends, whatever happened inside it."""
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate()


def children(pid: int) -> list[int]:
    """The direct child processes of ``pid`` (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        text = (task / "children").read_text() if (task / "children").exists() else ""
        found += [int(p) for p in text.split()]
    return found


def wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 300) -> None:
    """Wait until ``path`` exists (fails if ``proc`` ends first or time runs out)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {path} appeared: {proc.communicate()}")
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.05)


def interrupt(
    proc: subprocess.Popen[str], sig: signal.Signals = signal.SIGTERM, *, group: bool = False
) -> None:
    """Send ``sig`` to ``proc``, or with ``group`` to its whole process group."""
    if group:
        os.killpg(proc.pid, sig)
    else:
        os.kill(proc.pid, sig)

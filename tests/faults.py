"""Fault injection for the reliability tests, the test side: start `harmonia` children (with a
fault armed by `fault_child.py`, or plain ones killed from outside at random moments), wait for
training progress, and read run directories back for comparison; numerical faults in-process,
corrupt datasets, and the reliability report.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

CHILD = Path(__file__).with_name("fault_child.py").resolve()
"""The script a faulty child runs (``python CHILD [--fault SPEC] -- ARGS``)."""
KILLED = -signal.SIGKILL
"""Return code of a process that died of SIGKILL."""

TINY_RUN = [
    "data.batch_size=8",
    "data.num_workers=0",
    "eval.batch_size=16",
    "eval.max_samples=16",
    "train.eval_every=0",
    "train.log_every=1",
    "train.progress=false",
]
"""Overrides of the shipped ``demo`` config for a run of seconds on the tiny dataset."""

REPRODUCIBLE = ("loss/", "conflict/", "hist/", "curriculum/", "val/", "lr", "grad_norm")
"""Metric keys that a resumed run must reproduce exactly (times and throughputs are not)."""


# ------------------------------------------------------------------------- in the test process
def child_env(threads: int = 1) -> dict[str, str]:
    """The environment of a child run: one thread per process (as the in-process references)."""
    # a child that aborts in native code (SIGABRT, SIGSEGV) prints its Python stacks
    return {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "PYTHONUNBUFFERED": "1",
        "PYTHONFAULTHANDLER": "1",
    }


def start(
    args: Sequence[str], fault: str | None = None, *, new_session: bool = False
) -> subprocess.Popen[str]:
    """Start ``harmonia ARGS`` in a child process, with ``fault`` armed when given."""
    command = [sys.executable, str(CHILD), *(["--fault", fault] if fault else []), "--", *args]
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
        start_new_session=new_session,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 300) -> tuple[int, str, str]:
    """Wait for a child; its return code, stdout and stderr."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"child did not finish in {timeout} s:\n{out}\n{err}") from None
    return proc.returncode, out, err


def logged_steps(run: Path) -> list[int]:
    """Steps of the rows in RUN/metrics.jsonl (a torn last line is ignored)."""
    from harmonia.training.logging import read_metrics

    return [int(r["step"]) for r in read_metrics(run / "metrics.jsonl")]


def wait_for_step(proc: subprocess.Popen[str], run: Path, step: int, timeout: float = 240) -> bool:
    """Wait until the run has logged ``step``; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while True:
        steps = logged_steps(run)
        if steps and steps[-1] >= step:
            return True
        if proc.poll() is not None:
            return False
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{run}: step {step} not reached in {timeout} s")
        time.sleep(0.02)


def readable_checkpoints(run: Path) -> list[int]:
    """Load every listed checkpoint (state and model); their steps. Raises on any unreadable."""
    from harmonia.models import VATT
    from harmonia.training.checkpoint import list_checkpoints, load_checkpoint

    steps = []
    for path in list_checkpoints(run):
        steps.append(load_checkpoint(path).step)
        VATT.from_pretrained(path)
    return steps


def weights(model_dir: Path) -> dict[str, Any]:
    """The tensors of a model directory's ``model.safetensors``."""
    from safetensors.torch import load_file

    return load_file(model_dir / "model.safetensors")


def assert_same_weights(a: Path, b: Path) -> None:
    """Bit-identical tensors in two model (or checkpoint) directories."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


def same_tree(a: Any, b: Any) -> bool:
    """Equal nested containers, tensors compared bit for bit."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_tree(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_tree(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def reproducible_rows(run: Path) -> list[dict[str, Any]]:
    """The metrics rows restricted to what an exact resume reproduces."""
    from harmonia.training.logging import read_metrics

    return [
        {k: v for k, v in r.items() if k == "step" or k.startswith(REPRODUCIBLE)}
        for r in read_metrics(run / "metrics.jsonl")
    ]


# ------------------------------------------------------------------------- numerical faults
NUMERIC_FAULTS = ("nan-loss", "inf-loss", "nan-grad", "inf-grad", "nan-anchor-grad")
"""Where a non-finite value enters a step: one loss; one parameter's gradient after the
harmonized backward; the gradient reaching the shared anchor (so the Harmonizer measures it)."""


class NumericFaults:
    """Injects non-finite values into chosen training steps of an in-process `train` run.

    ``plan`` maps the 1-based number of a training forward pass (validation passes are not
    counted) to one of `NUMERIC_FAULTS`. `install` patches the loop's objective class and
    harmonizer factory through ``monkeypatch``, so nothing outside the test changes.
    """

    def __init__(self, plan: dict[int, str]) -> None:
        self.plan = plan
        self.calls = 0

    def now(self) -> str | None:
        return self.plan.get(self.calls)

    def install(self, monkeypatch: Any) -> None:
        from harmonia.training import components

        faults = self
        value = {"nan": float("nan"), "inf": float("inf")}

        class FaultyObjective(components.ContrastiveObjective):  # type: ignore[misc,name-defined]
            def forward(self, output: Any) -> dict[str, Any]:
                losses = super().forward(output)
                if not torch.is_grad_enabled():  # a validation pass
                    return dict(losses)
                faults.calls += 1
                kind = faults.now() or ""
                if kind.endswith("-loss"):
                    name = sorted(losses)[0]
                    losses = {**losses, name: losses[name] * value[kind[:3]]}
                elif kind == "nan-anchor-grad":
                    output.anchor.register_hook(lambda g: g * float("nan"))
                return dict(losses)

        build = components.build_harmonizer

        def build_harmonizer(cfg: Any, seed: int) -> Any:
            harmonizer = build(cfg, seed)
            backward = harmonizer.backward

            def faulty_backward(*args: Any, **kwargs: Any) -> Any:
                stats = backward(*args, **kwargs)
                kind = faults.now() or ""
                if kind.endswith("-grad") and kind != "nan-anchor-grad":
                    param = next(p for p in kwargs["encoder"].parameters() if p.grad is not None)
                    param.grad.view(-1)[0] = value[kind[:3]]
                return stats

            harmonizer.backward = faulty_backward  # type: ignore[method-assign]
            return harmonizer

        monkeypatch.setattr(components, "ContrastiveObjective", FaultyObjective)
        monkeypatch.setattr(components, "build_harmonizer", build_harmonizer)


# ------------------------------------------------------------------------- corrupt datasets
def _no_audio(members: dict[str, bytes], spec: Any) -> dict[str, bytes]:
    import numpy as np

    from harmonia.data.media import encode_mp4

    frames = np.zeros((spec.frames, spec.height, spec.width, 3), np.uint8)
    return {**members, "mp4": encode_mp4(frames, None, spec)}


def _captions(texts: list[str]) -> Callable[[dict[str, bytes], Any], dict[str, bytes]]:
    import json

    def change(members: dict[str, bytes], spec: Any) -> dict[str, bytes]:
        meta = json.loads(members["json"])
        return {**members, "json": json.dumps({**meta, "captions": texts}).encode()}

    return change


CORRUPTIONS: dict[str, tuple[Callable[[dict[str, bytes], Any], dict[str, bytes]], str]] = {
    "truncated mp4": (lambda m, spec: {**m, "mp4": m["mp4"][: len(m["mp4"]) // 3]}, "mp4:"),
    "garbage mp4": (lambda m, spec: {**m, "mp4": bytes(range(7, 256, 3)) * 50}, "mp4:"),
    "zero-byte mp4": (lambda m, spec: {**m, "mp4": b""}, "mp4:"),
    "no audio stream": (_no_audio, "no audio stream"),
    "no captions": (_captions([]), "caption"),
    "zero-length captions": (_captions(["", "", " "]), "caption"),
}
"""Kind of damage -> (change of a sample's members, words its skip reason must contain)."""


def corrupt_split(root: Path, split: str, every: int) -> dict[str, str]:
    """Damage every ``every``-th sample of a built split (cycling through `CORRUPTIONS`) and cut
    its last shard in the middle of its second-to-last sample: a truncated tar.

    Returns sample id -> the words its skip reason must contain.
    """
    from harmonia.data import load_media_spec, read_index
    from harmonia.data.index import INDEX_FILE, write_index
    from harmonia.data.shards import read_member, write_shard

    spec = load_media_spec(root)
    records = read_index(root)
    mine = [r for r in records if r["split"] == split]
    kinds = list(CORRUPTIONS)
    expected: dict[str, str] = {}
    changes: dict[str, Callable[[dict[str, bytes], Any], dict[str, bytes]]] = {}
    for n, record in enumerate(mine[every // 2 : -2 : every]):
        change, reason = CORRUPTIONS[kinds[n % len(kinds)]]
        changes[record["id"]] = change
        expected[record["id"]] = reason
    for shard in sorted({r["shard"] for r in mine if r["id"] in changes}):
        samples = []
        with (root / shard).open("rb") as fh:
            for r in (r for r in records if r["shard"] == shard):
                members = {
                    ext: read_member(fh, m["offset"], m["size"]) for ext, m in r["members"].items()
                }
                if r["id"] in changes:
                    members = changes[r["id"]](members, spec)
                samples.append((r["id"], list(members.items())))
        located = write_shard(root / shard, samples)
        for r in records:
            if r["shard"] == shard:
                r["members"] = located[r["id"]]
    write_index(root / INDEX_FILE, records)
    last = [r for r in mine if r["shard"] == mine[-1]["shard"]]
    cut = last[-2]["members"]["mp4"]
    os.truncate(root / last[-1]["shard"], cut["offset"] + cut["size"] // 2)
    for r in last[-2:]:
        expected[r["id"]] = "truncated"
    return expected


def record(test: str, **counts: Any) -> None:
    """Report a test's fault counts: printed, and appended to $HARMONIA_RELIABILITY_REPORT."""
    import json

    line = json.dumps({"test": test, **counts}, sort_keys=True)
    print(f"reliability: {line}")
    target = os.environ.get("HARMONIA_RELIABILITY_REPORT")
    if target:
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run this process's torch with ``count`` intra-op threads inside the block."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)

"""Fault injection for the reliability tests: `harmonia` processes that die at chosen moments.

Run as a script, ``python tests/faults.py [--fault SPEC] -- ARGS...`` runs ``harmonia ARGS``
(`harmonia.cli.main`) in this process after arming one fault, most of which SIGKILL it:

  ``torn:NAME:N``  the N-th write of a file called NAME (through ``torch.save``, safetensors or
                   ``Path.write_text``) is cut to half its bytes, then the process dies: a kill
                   in the middle of writing that file
  ``rename:N``     the process dies just before the N-th checkpoint directory is renamed into
                   place (everything written and flushed, nothing published)
  ``prune:N``      the process dies halfway through deleting the N-th old checkpoint
  ``fsize:BYTES:N`` after the N-th checkpoint no file may grow past BYTES (writes fail with
                   EFBIG, as on a full disk); the process lives on

The helpers start such processes (or plain ones, killed from outside at random moments), wait
for training progress, and read run directories back for comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve()
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


# ------------------------------------------------------------------------- in the child process
def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def plain_name(path: Any) -> str:
    """``.model.safetensors.0a1b2c3d.tmp`` -> ``model.safetensors``: the file a temporary one
    (`harmonia.files.atomic_path`) becomes."""
    name = Path(path).name
    temporary = re.fullmatch(r"\.(.+)\.[0-9a-f]{8}\.tmp", name)
    return temporary.group(1) if temporary else name


def _arm_torn(name: str, nth: int) -> None:
    from harmonia.models import pretrained

    seen = [0]

    def tear(path: Any) -> None:
        if plain_name(path) != name:
            return
        seen[0] += 1
        if seen[0] == nth:
            size = Path(path).stat().st_size
            os.truncate(path, size // 2)
            _die()

    def wrap(write: Callable[..., Any], path_of: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            result = write(*args, **kwargs)
            tear(path_of(*args, **kwargs))
            return result

        return wrapped

    torch.save = wrap(torch.save, lambda obj, f, *a, **k: f)  # type: ignore[assignment]
    pretrained.save_file = wrap(pretrained.save_file, lambda tensors, f, *a, **k: f)  # type: ignore[assignment]
    pathlib.Path.write_text = wrap(pathlib.Path.write_text, lambda self, *a, **k: self)  # type: ignore[method-assign]


def _arm_rename(nth: int) -> None:
    from harmonia.training import checkpoint

    real = checkpoint._replace_dir
    seen = [0]

    def replace_dir(tmp: Path, final: Path) -> None:
        seen[0] += 1
        if seen[0] == nth:
            _die()
        real(tmp, final)

    checkpoint._replace_dir = replace_dir  # type: ignore[assignment]


def _arm_prune(nth: int) -> None:
    real = shutil.rmtree
    seen = [0]
    step_dir = re.compile(r"step-\d{8}")

    def rmtree(path: Any, *args: Any, **kwargs: Any) -> None:
        p = Path(path)
        old_checkpoint = (
            p.parent.name == "checkpoints"
            and step_dir.search(p.name) is not None
            and not p.name.startswith(".tmp-step-")  # leftovers of interrupted writes
        )
        if old_checkpoint and p.is_dir():
            seen[0] += 1
            if seen[0] == nth:
                files = sorted(f for f in p.iterdir() if f.is_file())
                for f in files[: max(1, len(files) // 2)]:
                    f.unlink()
                _die()
        real(path, *args, **kwargs)

    shutil.rmtree = rmtree  # type: ignore[assignment]


def _arm_fsize(limit: int, nth: int) -> None:
    """After the N-th checkpoint is in place, no file may grow past ``limit`` bytes (EFBIG):
    the disk is full for the large files of the next checkpoint."""
    import resource

    from harmonia.training import checkpoint

    real = checkpoint._replace_dir
    seen = [0]

    def replace_dir(tmp: Path, final: Path) -> None:
        real(tmp, final)
        seen[0] += 1
        if seen[0] == nth:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failing write, not a dead process
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    checkpoint._replace_dir = replace_dir  # type: ignore[assignment]


def arm(spec: str) -> None:
    """Arm the fault ``spec`` (see the module docstring) in this process."""
    kind, *rest = spec.split(":")
    if kind == "torn" and len(rest) == 2:
        _arm_torn(rest[0], int(rest[1]))
    elif kind == "rename" and len(rest) == 1:
        _arm_rename(int(rest[0]))
    elif kind == "prune" and len(rest) == 1:
        _arm_prune(int(rest[0]))
    elif kind == "fsize" and len(rest) == 2:
        _arm_fsize(int(rest[0]), int(rest[1]))
    else:
        raise SystemExit(f"faults.py: unknown fault {spec!r}")


def child_main(argv: Sequence[str]) -> int:
    """Entry point of ``python tests/faults.py [--fault SPEC] -- harmonia args``."""
    parser = argparse.ArgumentParser(prog="faults.py")
    parser.add_argument("--fault", default=None)
    parser.add_argument("args", nargs=argparse.REMAINDER)
    options = parser.parse_args(argv)
    args = options.args[1:] if options.args[:1] == ["--"] else options.args
    torch.set_num_threads(1)
    if options.fault:
        arm(options.fault)
    from harmonia.cli import main

    return main(args)


# ------------------------------------------------------------------------- a small DDP run
DDP_STEPS_LR = 0.05


def ddp_model() -> torch.nn.Module:
    """The model every rank (and the one-process reference) starts from."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))


def ddp_loss(model: torch.nn.Module, step: int, rank: int) -> torch.Tensor:
    """Rank ``rank``'s loss at ``step``: its own 4 samples, drawn from (step, rank)."""
    generator = torch.Generator().manual_seed(1000 * step + rank)
    x, target = torch.randn(4, 8, generator=generator), torch.randn(4, 4, generator=generator)
    return (model(x) - target).pow(2).mean()


def ddp_reference(steps: int, world: int = 2) -> dict[str, torch.Tensor]:
    """What ``world`` DDP ranks compute, in one process: the gradients averaged over ranks."""
    model = ddp_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=DDP_STEPS_LR)
    params = list(model.parameters())
    for step in range(1, steps + 1):
        grads = []
        for rank in range(world):
            optimizer.zero_grad()
            ddp_loss(model, step, rank).backward()
            grads.append([p.grad.clone() for p in params if p.grad is not None])
        for param, *per_rank in zip(params, *grads, strict=True):
            param.grad = sum(g / world for g in per_rank)  # type: ignore[assignment]
        optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def ddp_main(argv: Sequence[str]) -> int:
    """One rank: ``python tests/faults.py ddp OUT STEPS [--die RANK:STEP:kill|stop]
    [--timeout S]``. Trains ``ddp_model`` with DDP through harmonia.training.distributed,
    resuming from OUT's newest checkpoint (rank 0 writes one per step); the rank named by
    ``--die`` SIGKILLs (or SIGSTOPs) itself at that step, before its gradients are reduced."""
    from safetensors.torch import save_file

    from harmonia.training.checkpoint import (
        latest_checkpoint,
        load_checkpoint,
        load_model_weights,
        save_checkpoint,
    )
    from harmonia.training.distributed import DistributedContext, wrap_model

    parser = argparse.ArgumentParser(prog="faults.py ddp")
    parser.add_argument("out", type=Path)
    parser.add_argument("steps", type=int)
    parser.add_argument("--die", default=None)
    parser.add_argument("--timeout", type=float, default=600.0)
    options = parser.parse_args(argv)
    torch.set_num_threads(1)
    die = options.die.split(":") if options.die else None
    with DistributedContext.from_env("cpu", timeout_s=options.timeout) as ctx:
        model = ddp_model()
        optimizer = torch.optim.AdamW(model.parameters(), lr=DDP_STEPS_LR)
        start = 0
        latest = latest_checkpoint(options.out)
        if latest is not None:
            load_model_weights(model, latest)
            checkpoint = load_checkpoint(latest)
            optimizer.load_state_dict(checkpoint.state["optimizer"])
            start = checkpoint.step
        print(f"rank {ctx.rank}: starting at step {start + 1}", flush=True)
        wrapped = wrap_model(model, ctx, "ddp")
        for step in range(start + 1, options.steps + 1):
            optimizer.zero_grad()
            loss = ddp_loss(wrapped, step, ctx.rank)
            if die and int(die[0]) == ctx.rank and int(die[1]) == step:
                print(f"rank {ctx.rank}: {die[2]} at step {step}", flush=True)
                os.kill(os.getpid(), signal.SIGKILL if die[2] == "kill" else signal.SIGSTOP)
            loss.backward()
            optimizer.step()
            ctx.mean({"loss": float(loss.detach())})
            if ctx.is_main:
                save_checkpoint(
                    options.out,
                    step,
                    model=model,
                    state={"optimizer": optimizer.state_dict()},
                    keep_last=2,
                )
            ctx.barrier()
        if ctx.is_main:
            save_file(model.state_dict(), str(options.out / "final.safetensors"))
    return 0


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
    command = [sys.executable, str(HERE), *(["--fault", fault] if fault else []), "--", *args]
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
        from harmonia.training import loop

        faults = self
        value = {"nan": float("nan"), "inf": float("inf")}

        class FaultyObjective(loop.ContrastiveObjective):  # type: ignore[misc,name-defined]
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

        build = loop.build_harmonizer

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

        monkeypatch.setattr(loop, "ContrastiveObjective", FaultyObjective)
        monkeypatch.setattr(loop, "build_harmonizer", build_harmonizer)


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


if __name__ == "__main__":
    if sys.argv[1:2] == ["ddp"]:
        sys.exit(ddp_main(sys.argv[2:]))
    sys.exit(child_main(sys.argv[1:]))

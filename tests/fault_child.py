"""The child side of the reliability tests: `harmonia` processes that die at chosen moments.

``python tests/fault_child.py [--fault SPEC] -- ARGS...`` runs ``harmonia ARGS``
(`harmonia.cli.main`) in this process after arming one fault, most of which SIGKILL it:

  ``torn:NAME:N``  the N-th write of a file called NAME (through ``torch.save``, safetensors or
                   ``Path.write_text``) is cut to half its bytes, then the process dies: a kill
                   in the middle of writing that file
  ``rename:N``     the process dies just before the N-th checkpoint directory is renamed into
                   place (everything written and flushed, nothing published)
  ``prune:N``      the process dies halfway through deleting the N-th old checkpoint
  ``fsize:BYTES:N`` after the N-th checkpoint no file may grow past BYTES (writes fail with
                   EFBIG, as on a full disk); the process lives on

``python tests/fault_child.py ddp OUT STEPS [--die RANK:STEP:kill|stop]`` is one rank of a small
DDP run whose rank can kill or stop itself (`ddp_main`). `tests/faults.py` starts these processes.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch


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
        raise SystemExit(f"fault_child.py: unknown fault {spec!r}")


def child_main(argv: Sequence[str]) -> int:
    """Entry point of ``python tests/fault_child.py [--fault SPEC] -- harmonia args``."""
    parser = argparse.ArgumentParser(prog="fault_child.py")
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
    """One rank: ``python tests/fault_child.py ddp OUT STEPS [--die RANK:STEP:kill|stop]
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

    parser = argparse.ArgumentParser(prog="fault_child.py ddp")
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


if __name__ == "__main__":
    if sys.argv[1:2] == ["ddp"]:
        sys.exit(ddp_main(sys.argv[2:]))
    sys.exit(child_main(sys.argv[1:]))

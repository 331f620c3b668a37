"""Checkpoint directories written atomically and loaded without executing code.

A checkpoint is ``RUN/checkpoints/step-XXXXXXXX/`` holding the model weights (safetensors, via
the model's ``save_pretrained`` when it has one), ``state.pt`` (optimizer, scheduler, RNG, data
position, harmonizer: tensors and plain containers only, read with ``weights_only=True``),
``ledger.json`` and ``manifest.json`` (SHA-256 of every file). It is written into a hidden
temporary directory beside its final place, flushed to disk and renamed, so a reader never sees
half of one; ``keep_last`` bounds how many stay.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import random
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import nn

from harmonia.errors import CheckpointError, first_line
from harmonia.files import parse_json
from harmonia.training.layout import CHECKPOINTS_DIR as CHECKPOINTS

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
STATE = "state.pt"
LEDGER = "ledger.json"
MANIFEST = "manifest.json"
_NAME = re.compile(r"^step-(\d{8})$")
_TEMP_PREFIX = ".tmp-"


@dataclass
class Checkpoint:
    """A verified checkpoint: where it is, its step, the training state and the ledger state."""

    path: Path
    step: int
    state: dict[str, Any]
    ledger: dict[str, Any] | None


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    """Where the checkpoint of ``step`` lives inside a run directory."""
    return Path(run_dir) / CHECKPOINTS / f"step-{step:08d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoint directories of a run, oldest first (temporary ones are never listed)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name)]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest finished checkpoint of a run, or None when it has none."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save_checkpoint(
    run_dir: Path,
    step: int,
    *,
    model: nn.Module,
    state: Mapping[str, Any],
    ledger: Mapping[str, Any] | None = None,
    keep_last: int | None = None,
) -> Path:
    """Write the checkpoint of ``step`` atomically and prune all but the ``keep_last`` newest.

    A failed write (disk full, read-only directory) leaves no trace and raises CheckpointError
    naming the checkpoint, the cause and the previous checkpoint, which stays intact.
    """
    final = checkpoint_dir(run_dir, step)
    previous = latest_checkpoint(run_dir)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}{final.name}-", dir=final.parent))
    except OSError as err:
        raise _write_error(final, previous, err) from err
    try:
        save_model(model, tmp)
        torch.save({"format": FORMAT_VERSION, "step": step, **state}, tmp / STATE)
        if ledger is not None:
            (tmp / LEDGER).write_text(json.dumps(ledger), encoding="utf-8")
        _write_manifest(tmp, step)
        for item in tmp.iterdir():
            _fsync(item)
        _fsync(tmp)
        _replace_dir(tmp, final)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        # torch.save reports a failed write as RuntimeError, safetensors as SafetensorError
        if isinstance(err, (OSError, RuntimeError, SafetensorError)):
            raise _write_error(final, previous, err) from err
        raise
    if keep_last is not None:
        prune_checkpoints(run_dir, keep_last)
    return final


def _write_error(final: Path, previous: Path | None, err: BaseException) -> CheckpointError:
    cause = first_line(err)
    with contextlib.suppress(OSError):
        cause += f"; {shutil.disk_usage(final.parent).free / 2**20:.0f} MiB free there"
    kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint"
    return CheckpointError(
        f"cannot write checkpoint {final} ({cause}); {kept} (free space or fix the directory's "
        "permissions, then resume)"
    )


def prune_checkpoints(run_dir: Path, keep_last: int) -> None:
    """Delete all but the ``keep_last`` newest checkpoints, and leftovers of interrupted writes.

    A checkpoint that is a symbolic link loses only the link: what it points to is left alone.
    """
    root = Path(run_dir) / CHECKPOINTS
    for old in list_checkpoints(run_dir)[: -keep_last or None]:
        if old.is_symlink():
            old.unlink()
            continue
        # renamed out of the listing first: a kill while deleting never leaves half a checkpoint
        doomed = tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}old-{old.name}-", dir=root)
        os.replace(old, doomed)
        _remove(Path(doomed))
    for stale in root.glob(f"{_TEMP_PREFIX}*"):
        _remove(stale)


def _remove(path: Path) -> None:
    """Delete a directory tree; a symbolic link is unlinked, never followed."""
    if path.is_symlink():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(path: Path) -> Checkpoint:
    """Verify a checkpoint directory against its manifest and read its state and ledger."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint not found: {path}")
    manifest = _read_manifest(path)
    for name, digest in manifest["files"].items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint {path} is incomplete: {name} is missing")
        if _sha256(file) != digest:
            raise CheckpointError(f"checkpoint {path} was modified after writing: {name}")
    try:
        state = torch.load(path / STATE, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise CheckpointError(f"cannot read {path / STATE}: {first_line(err)}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path / STATE}: not a harmonia checkpoint of format {FORMAT_VERSION}"
        )
    ledger = None
    if (path / LEDGER).is_file():
        try:
            ledger = parse_json((path / LEDGER).read_text(encoding="utf-8"))
        except ValueError as err:
            raise CheckpointError(f"cannot read {path / LEDGER}: {err}") from None
    return Checkpoint(path=path, step=int(state["step"]), state=state, ledger=ledger)


@contextlib.contextmanager
def restoring(path: Path) -> Iterator[None]:
    """Around loading a checkpoint's state into a run's objects: a state that does not fit them
    (tampered with consistently, or written by other code) is a CheckpointError naming it."""
    try:
        yield
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as err:
        cause = f"no {err.args[0]!r} in it" if isinstance(err, KeyError) and err.args else ""
        cause = cause or f"{type(err).__name__}: {first_line(err, default='')}"
        raise CheckpointError(
            f"{path}: its training state does not fit this run ({cause})"
        ) from None


def save_model(model: nn.Module, directory: Path) -> None:
    """Model weights as safetensors: the model's own ``save_pretrained`` when it has one."""
    save_pretrained = getattr(model, "save_pretrained", None)
    if callable(save_pretrained):
        save_pretrained(directory)
    else:
        safetensors.torch.save_model(model, str(Path(directory) / WEIGHTS))


def load_model_weights(model: nn.Module, directory: Path) -> None:
    """Load ``model.safetensors`` from a checkpoint into ``model``; every tensor must match."""
    file = Path(directory) / WEIGHTS
    if not file.is_file():
        raise CheckpointError(f"model weights not found: {file}")
    try:
        missing, unexpected = safetensors.torch.load_model(model, str(file), strict=False)
    except RuntimeError as err:
        shapes = [line.strip() for line in str(err).splitlines() if "size mismatch" in line]
        detail = shapes[0] if shapes else str(err).splitlines()[0]
        raise CheckpointError(f"{file} does not match this model: {detail}") from None
    if missing or unexpected:
        parts = [f"missing {sorted(missing)[:3]}"] if missing else []
        parts += [f"unexpected {sorted(unexpected)[:3]}"] if unexpected else []
        raise CheckpointError(f"{file} does not match this model: {', '.join(parts)}")


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) generator states as tensors and plain values."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the generator states saved by `rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    keys = keys.numpy().astype(np.uint32)
    np.random.set_state((kind, keys, pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_manifest(directory: Path, step: int) -> None:
    files = {p.name: _sha256(p) for p in sorted(directory.iterdir()) if p.is_file()}
    manifest = {"format": FORMAT_VERSION, "step": step, "files": files}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")


def _read_manifest(path: Path) -> dict[str, Any]:
    file = path / MANIFEST
    if not file.is_file():
        raise CheckpointError(f"checkpoint {path} is incomplete: {MANIFEST} is missing")
    try:
        manifest = parse_json(file.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"checkpoint {path} has an unreadable {MANIFEST}") from None
    if not isinstance(files, dict) or STATE not in files:
        raise CheckpointError(f"checkpoint {path} has an unreadable {MANIFEST}")
    match = _NAME.match(path.name)
    if match and int(match.group(1)) != manifest.get("step"):
        raise CheckpointError(
            f"checkpoint {path} holds step {manifest.get('step')}, not its name's"
        )
    return manifest


def _replace_dir(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an existing ``final`` is moved aside first, then deleted."""
    aside = None
    if os.path.lexists(final):  # a dangling link too
        aside = final.with_name(f"{_TEMP_PREFIX}old-{final.name}-{os.getpid()}")
        os.replace(final, aside)
    os.replace(tmp, final)
    _fsync(final.parent)
    if aside is not None:
        _remove(aside)


def _fsync(path: Path) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    with contextlib.suppress(OSError):
        os.fsync(fd)
    os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

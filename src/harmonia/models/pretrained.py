"""A saved model directory: model.safetensors + config.json + vocab.json, no pickle.

The weights file's metadata records the SHA-256 of the config and vocabulary written beside it,
so a config or vocabulary edited or swapped after saving is caught, as are missing, extra or
reshaped tensors. Every problem raises CheckpointError saying which file and what differs.
Each file is written to a temporary name and renamed, so a crash never leaves half a file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from harmonia.errors import CheckpointError, ConfigError
from harmonia.files import atomic_path, parse_json, write_atomic
from harmonia.models.config import ModelConfig
from harmonia.models.vocab import WordTokenizer

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
VOCAB = "vocab.json"
FORMAT = "harmonia.vatt"


@dataclass(frozen=True)
class SavedModel:
    """What a model directory holds, read and cross-checked by `read_pretrained`."""

    path: Path
    config: ModelConfig
    tokenizer: WordTokenizer | None
    tensors: dict[str, torch.Tensor]

    def load_into(self, model: nn.Module) -> None:
        """Copy the weights into ``model`` built from `config` (dtype of the saved weights);
        missing, extra or reshaped tensors raise CheckpointError."""
        _check_tensors(self.path / WEIGHTS, model.state_dict(), self.tensors)
        dtypes = {t.dtype for t in self.tensors.values() if t.is_floating_point()}
        if len(dtypes) == 1:
            model.to(dtypes.pop())
        model.load_state_dict(self.tensors, strict=True)


def write_pretrained(
    directory: str | Path,
    config: ModelConfig,
    tokenizer: WordTokenizer | None,
    state: Mapping[str, torch.Tensor],
) -> None:
    """Write weights ``state``, ``config`` and the vocabulary into ``directory`` (created if
    needed)."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    config_bytes = _json_bytes({"format": FORMAT, "version": 1, "config": config.to_dict()})
    vocab = _json_bytes(tokenizer.to_dict()) if tokenizer is not None else b""
    if vocab:
        write_atomic(path / VOCAB, vocab)
    write_atomic(path / CONFIG, config_bytes)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    metadata = {"format": "pt", "harmonia": FORMAT, "config_sha256": _sha(config_bytes)}
    if vocab:
        metadata["vocab_sha256"] = _sha(vocab)
    with atomic_path(path / WEIGHTS) as tmp:
        save_file(tensors, tmp, metadata=metadata)


def read_pretrained(directory: str | Path) -> SavedModel:
    """Read what `write_pretrained` wrote, checking that the three files agree."""
    path = Path(directory)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such model directory")
    config_bytes = _read(path / CONFIG)
    config = _parse_config(path / CONFIG, config_bytes)
    needs_vocab = any(m.kind == "text" for m in config.modalities.values())
    vocab_bytes = _read(path / VOCAB) if needs_vocab else b""
    tokenizer = _parse_vocab(path / VOCAB, vocab_bytes) if needs_vocab else None
    metadata, tensors = _read_weights(path / WEIGHTS)
    _check_digest(path, metadata, "config_sha256", CONFIG, config_bytes)
    if needs_vocab:
        _check_digest(path, metadata, "vocab_sha256", VOCAB, vocab_bytes)
    return SavedModel(path, config, tokenizer, tensors)


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2) + "\n").encode("utf-8")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read ({err.strerror or err})") from None


def _json_object(path: Path, data: bytes) -> dict[str, Any]:
    try:
        doc = parse_json(data)
    except ValueError as err:  # bad syntax or UTF-8, nested too deeply
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return doc


def _parse_config(path: Path, data: bytes) -> ModelConfig:
    doc = _json_object(path, data)
    if doc.get("format") != FORMAT or doc.get("version") != 1:
        raise CheckpointError(f"{path}: not a harmonia VATT config (format/version)")
    if not isinstance(doc.get("config"), dict):
        raise CheckpointError(f"{path}: 'config' must be a JSON object")
    try:
        return ModelConfig.from_dict(doc["config"])
    except ConfigError as err:
        raise CheckpointError(f"{path}: {err}") from None


def _parse_vocab(path: Path, data: bytes) -> WordTokenizer:
    return WordTokenizer.from_dict(_json_object(path, data), source=str(path))


def _read_weights(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open API
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not t.isfinite().all()]
    if bad:
        raise CheckpointError(
            f"{path}: {len(bad)} weight tensor(s) hold NaN or Inf (e.g. {bad[0]}): the run "
            "diverged; use an earlier checkpoint"
        )
    return metadata, tensors


def _check_digest(path: Path, metadata: dict[str, str], key: str, name: str, data: bytes) -> None:
    expected = metadata.get(key)
    if expected is None:
        raise CheckpointError(f"{path / WEIGHTS}: metadata has no {key} (not saved by harmonia?)")
    if expected != _sha(data):
        raise CheckpointError(
            f"{path / name} does not match {WEIGHTS}: it was changed or swapped after saving "
            f"(sha256 {_sha(data)[:12]}..., weights were saved with {expected[:12]}...)"
        )


def _check_tensors(
    path: Path, expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]
) -> None:
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        parts = [
            f"missing {_few(missing)}" if missing else "",
            f"unexpected {_few(extra)}" if extra else "",
        ]
        raise CheckpointError(
            f"{path}: tensors do not match the config: {'; '.join(p for p in parts if p)}"
        )
    for key, want in expected.items():
        got = found[key]
        if tuple(got.shape) != tuple(want.shape):
            raise CheckpointError(
                f"{path}: tensor {key} has shape {list(got.shape)}, "
                f"the config needs {list(want.shape)}"
            )
        if got.is_floating_point() != want.is_floating_point():
            raise CheckpointError(
                f"{path}: tensor {key} has dtype {got.dtype}, expected {want.dtype}"
            )


def _few(keys: list[str]) -> str:
    shown = ", ".join(keys[:3])
    return shown + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

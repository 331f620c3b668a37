"""Checkpoints: atomic writes, keep-last pruning, verified loads, exact RNG round trip."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from harmonia.errors import CheckpointError
from harmonia.training import checkpoint as ckpt
from harmonia.training.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_model_weights,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def optimizer_state(model: nn.Module) -> dict:
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    return opt.state_dict()


def save(run: Path, step: int, model: nn.Module, keep_last: int | None = 3) -> Path:
    state = {"optimizer": optimizer_state(model), "rng": rng_state(), "data": {"epoch": 1}}
    return save_checkpoint(
        run, step, model=model, state=state, ledger={"ids": ["a"]}, keep_last=keep_last
    )


def test_round_trip(tmp_path: Path) -> None:
    model = small_model()
    path = save(tmp_path, 7, model)
    assert path.name == "step-00000007"
    loaded = load_checkpoint(path)
    assert loaded.step == 7
    assert loaded.ledger == {"ids": ["a"]}
    assert loaded.state["data"] == {"epoch": 1}
    other = small_model(seed=1)
    load_model_weights(other, path)
    for a, b in zip(model.parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b)
    opt = torch.optim.AdamW(other.parameters(), lr=0.1)
    opt.load_state_dict(loaded.state["optimizer"])
    assert opt.state_dict()["state"][0]["step"] == 1


def test_keep_last_and_latest(tmp_path: Path) -> None:
    model = small_model()
    assert latest_checkpoint(tmp_path) is None
    for step in (1, 2, 3, 4, 5):
        save(tmp_path, step, model, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000004", "step-00000005"]
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-00000005"


def test_failed_write_leaves_old_checkpoint_and_no_partial_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = small_model()
    first = save(tmp_path, 1, model)

    def broken_save(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", broken_save)
    with pytest.raises(CheckpointError, match=r"disk full.*previous checkpoint .* is intact"):
        save(tmp_path, 2, model)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [first.name]
    assert latest_checkpoint(tmp_path) == first
    assert load_checkpoint(first).step == 1


def test_interrupted_write_is_never_listed(tmp_path: Path) -> None:
    model = small_model()
    save(tmp_path, 1, model)
    half = tmp_path / "checkpoints" / ".tmp-step-00000002-abc"
    half.mkdir()
    (half / "state.pt").write_bytes(b"partial")
    assert latest_checkpoint(tmp_path).name == "step-00000001"
    save(tmp_path, 3, model)
    assert not half.exists()


def test_rewriting_a_step_replaces_it(tmp_path: Path) -> None:
    save(tmp_path, 4, small_model(0))
    model = small_model(1)
    path = save(tmp_path, 4, model)
    other = small_model(2)
    load_model_weights(other, path)
    assert torch.equal(other[0].weight, model[0].weight)


def test_tampered_files_are_rejected(tmp_path: Path) -> None:
    path = save(tmp_path, 1, small_model())
    with (path / "model.safetensors").open("r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(CheckpointError, match=r"modified after writing: model\.safetensors"):
        load_checkpoint(path)


def test_missing_pieces(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope")
    path = save(tmp_path, 1, small_model())
    (path / "ledger.json").unlink()
    with pytest.raises(CheckpointError, match=r"incomplete: ledger\.json is missing"):
        load_checkpoint(path)
    (path / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match=r"manifest\.json is missing"):
        load_checkpoint(path)


def test_state_with_code_is_refused(tmp_path: Path) -> None:
    """A state.pt holding arbitrary objects is not unpickled (weights_only=True)."""
    path = save(tmp_path, 1, small_model())
    torch.save({"format": 1, "step": 1, "evil": Path("x")}, path / "state.pt")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["state.pt"] = ckpt._sha256(path / "state.pt")
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(path)


def test_weights_of_another_model_are_rejected(tmp_path: Path) -> None:
    path = save(tmp_path, 1, small_model())
    with pytest.raises(CheckpointError, match="does not match this model"):
        load_model_weights(nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)), path)
    with pytest.raises(CheckpointError, match="does not match this model"):
        load_model_weights(nn.Sequential(nn.Linear(4, 3)), path)


def test_rng_state_round_trip(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    path = save(tmp_path, 1, small_model())
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    set_rng_state(load_checkpoint(path).state["rng"])
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1]
    assert torch.equal(got[2], expected[2])

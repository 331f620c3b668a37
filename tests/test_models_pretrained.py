"""save_pretrained / from_pretrained: identical embeddings, and tampering caught by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from harmonia.errors import CheckpointError
from harmonia.models import VATT, ModelConfig, WordTokenizer
from harmonia.models.synthetic import WORDS, random_batch


@pytest.fixture()
def saved(tmp_path: Path) -> tuple[VATT, Path]:
    torch.manual_seed(0)
    model = VATT(ModelConfig.named("tiny"), WordTokenizer.build([" ".join(WORDS), "extra words"]))
    model.save_pretrained(tmp_path / "model")
    return model, tmp_path / "model"


def test_round_trip_gives_identical_embeddings(saved: tuple[VATT, Path]) -> None:
    model, path = saved
    assert sorted(p.name for p in path.iterdir()) == [
        "config.json",
        "model.safetensors",
        "vocab.json",
    ]
    loaded = VATT.from_pretrained(path)
    assert loaded.config == model.config and loaded.tokenizer == model.tokenizer
    batch = random_batch(model.config, 3, captions=2)
    with torch.no_grad():
        a, b = model.eval()(batch), loaded.eval()(batch)
    for space, embs in a.embeddings.items():
        for name, emb in embs.items():
            assert torch.equal(emb, b.embeddings[space][name])
    assert torch.equal(a.anchor, b.anchor)


def test_float64_weights_load_as_float64(tmp_path: Path) -> None:
    model = VATT(ModelConfig.named("tiny"), WordTokenizer.build(["a b"])).double()
    model.save_pretrained(tmp_path)
    assert next(VATT.from_pretrained(tmp_path).parameters()).dtype == torch.float64


def test_edited_config_is_caught(saved: tuple[VATT, Path]) -> None:
    _, path = saved
    doc = json.loads((path / "config.json").read_text())
    doc["config"]["backbone"]["dropout"] = 0.1
    (path / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"config\.json does not match model\.safetensors"):
        VATT.from_pretrained(path)


def test_swapped_vocabulary_is_caught(saved: tuple[VATT, Path]) -> None:
    _, path = saved
    WordTokenizer.build(["other words entirely"]).save(path / "vocab.json")
    with pytest.raises(CheckpointError, match=r"vocab\.json does not match"):
        VATT.from_pretrained(path)


def test_reshaped_missing_and_extra_tensors_are_named(saved: tuple[VATT, Path]) -> None:
    _, path = saved
    weights = path / "model.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(weights)

    tensors["heads.va.audio.weight"] = torch.zeros(3, 3)
    save_file(tensors, weights, metadata=metadata)
    with pytest.raises(CheckpointError, match=r"heads\.va\.audio\.weight has shape \[3, 3\]"):
        VATT.from_pretrained(path)

    del tensors["heads.va.audio.weight"]
    tensors["surprise"] = torch.zeros(1)
    save_file(tensors, weights, metadata=metadata)
    with pytest.raises(
        CheckpointError, match=r"missing heads\.va\.audio\.weight; unexpected surprise"
    ):
        VATT.from_pretrained(path)


def test_unreadable_files_are_named(saved: tuple[VATT, Path], tmp_path: Path) -> None:
    _, path = saved
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        VATT.from_pretrained(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json: not valid JSON"):
        VATT.from_pretrained(path)
    (path / "vocab.json").unlink()
    (path / "config.json").write_text(
        json.dumps({"format": "harmonia.vatt", "version": 1, "config": {}})
    )
    with pytest.raises(CheckpointError, match="missing required value"):
        VATT.from_pretrained(path)
    with pytest.raises(CheckpointError, match="no such model directory"):
        VATT.from_pretrained(tmp_path / "nowhere")


def test_missing_vocabulary_is_named(saved: tuple[VATT, Path]) -> None:
    _, path = saved
    (path / "vocab.json").unlink()
    with pytest.raises(CheckpointError, match=r"vocab\.json: cannot read"):
        VATT.from_pretrained(path)

"""A run directory without training: what `eval` and `audit` tests read."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from harmonia.data import ShardDataset
from harmonia.models import VATT, ModelConfig, WordTokenizer


def untrained_run(dataset: Path, run: Path) -> Path:
    """RUN/ with an untrained tiny VATT (vocabulary of ``dataset``'s training captions) and a
    config naming the dataset; the caller adds a ledger."""
    data = ShardDataset(dataset, "train")
    captions = [c for i in range(len(data)) for c in data[i]["text"]]
    torch.manual_seed(0)
    VATT(ModelConfig.named("tiny"), WordTokenizer.build(captions)).save_pretrained(run / "model")
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"dir": str(dataset)}}))
    return run

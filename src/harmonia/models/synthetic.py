"""Random batches in the collated-batch format for any ModelConfig (smoke tests, benchmarks)."""

from __future__ import annotations

from typing import Any

import torch

from harmonia.models.config import ModelConfig

WORDS: tuple[str, ...] = (
    *("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
    *("digit", "moves", "left", "right", "up", "down", "slowly"),
)


def random_captions(count: int, generator: torch.Generator, length: int = 6) -> list[str]:
    """``count`` captions of ``length`` words drawn from a small fixed word list."""
    picks = torch.randint(len(WORDS), (count, length), generator=generator)
    return [" ".join(WORDS[i] for i in row) for row in picks.tolist()]


def random_batch(
    config: ModelConfig, batch_size: int, *, captions: int = 4, seed: int = 0
) -> dict[str, Any]:
    """A batch with every configured modality: uint8 video, waveforms in [-1, 1], K captions."""
    g = torch.Generator().manual_seed(seed)
    batch: dict[str, Any] = {
        "id": [f"synthetic-{seed}-{i}" for i in range(batch_size)],
        "skipped": [],
    }
    for name, m in config.modalities.items():
        if m.kind == "video":
            batch[name] = torch.randint(
                0, 256, (batch_size, *m.shape), generator=g, dtype=torch.uint8
            )
        elif m.kind == "audio":
            batch[name] = torch.rand(batch_size, *m.shape, generator=g) * 2 - 1
        else:
            flat = random_captions(batch_size * captions, g)
            batch[name] = [flat[i * captions : (i + 1) * captions] for i in range(batch_size)]
    return batch

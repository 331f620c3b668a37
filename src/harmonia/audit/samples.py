"""Fetch a few samples' media for the report by id, through the dataset's random-access reader.

Unreadable samples are simply absent from the result (the report says "not available").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harmonia.data import ShardDataset, load_summary


@dataclass(frozen=True)
class SampleMedia:
    """Decoded media of one sample: frames uint8 [T, H, W, 3], mono waveform, its captions."""

    frames: np.ndarray | None
    audio: np.ndarray | None
    sample_rate: int
    captions: list[str]


MediaLookup = Callable[[Sequence[str]], Mapping[str, SampleMedia]]
"""Returns decoded media for the requested sample ids (ids it cannot find are left out)."""


def dataset_media(dataset_dir: str | Path) -> MediaLookup:
    """A lookup over every split of a built dataset (decoding with PyAV via harmonia.data)."""
    dataset = ShardDataset(dataset_dir, list(load_summary(dataset_dir)["splits"]))

    def lookup(ids: Sequence[str]) -> Mapping[str, SampleMedia]:
        found: dict[str, SampleMedia] = {}
        for sample_id in ids:
            try:
                item = dataset[dataset.index_of(sample_id)]
            except KeyError:
                continue
            if "video" not in item:  # a skip record: the sample is corrupt
                continue
            found[sample_id] = SampleMedia(
                frames=item["video"].numpy(),
                audio=item["audio"].numpy(),
                sample_rate=dataset.spec.sample_rate,
                captions=list(item["text"]),
            )
        return found

    return lookup

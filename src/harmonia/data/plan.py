"""Every random choice of a build, made up front: which image, recording, motion, noise and captions.

Each split draws from its own random stream (seeded by the build seed and the split name),
so changing one split's size leaves the others unchanged. Rendering is then a pure function
of a plan, which is what makes builds deterministic and parallel.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from harmonia.data.captions import sample_captions
from harmonia.data.config import EXTRA_SPLIT, NOISE_KINDS, SPLITS, BuildConfig
from harmonia.data.render import Trajectory, sample_trajectory
from harmonia.data.source_data import Recording, SourceData
from harmonia.data.spec import MOTIONS
from harmonia.errors import DataError

# Image index ranges of each split, as fractions of the source's images.
IMAGE_FRACTIONS: dict[str, tuple[float, float]] = {
    "train": (0.0, 0.7),
    "val": (0.7, 0.85),
    "test": (0.85, 1.0),
}


@dataclass(frozen=True)
class SplitPool:
    """What a split may draw from: a range of image indices and a set of speakers."""

    images: tuple[int, int]
    speakers: tuple[str, ...]


@dataclass(frozen=True)
class SamplePlan:
    """Everything needed to render one sample and to describe it in the index."""

    id: str
    split: str
    source: str  # "clean" or "extra"
    digit: int
    motion: str
    image_index: int
    speaker: str
    audio_file: str
    audio_digit: int
    caption_digit: int
    caption_motion: str
    misaligned_text: bool
    misaligned_audio: bool
    captions: tuple[str, ...]
    trajectory: Trajectory
    audio_position: float
    audio_peak: float

    def labels(self) -> dict[str, Any]:
        """The ground truth stored in index.jsonl (never in the shards)."""
        return {
            "id": self.id,
            "split": self.split,
            "source": self.source,
            "digit": self.digit,
            "motion": self.motion,
            "speaker": self.speaker,
            "image_index": self.image_index,
            "audio_file": self.audio_file,
            "audio_digit": self.audio_digit,
            "caption_digit": self.caption_digit,
            "caption_motion": self.caption_motion,
            "misaligned_text": self.misaligned_text,
            "misaligned_audio": self.misaligned_audio,
        }


def split_pools(source: SourceData, config: BuildConfig) -> dict[str, SplitPool]:
    """Speaker- and image-disjoint pools. Speakers sorted by name: the last goes to test, the one
    before to val, the rest to train (independent of the seed). "extra" shares train's pool."""
    speakers = source.speakers
    n_images = int(source.images.shape[0])
    if config.single_split:
        pools = {config.single_split: SplitPool((0, n_images), tuple(speakers))}
    else:
        if len(speakers) < 3:
            raise DataError(
                f"need recordings of >= 3 speakers for speaker-disjoint train/val/test, found {len(speakers)} "
                f"({', '.join(speakers)}); use --split to build a single split"
            )
        by_split = {"train": speakers[:-2], "val": speakers[-2:-1], "test": speakers[-1:]}
        pools = {}
        for split in SPLITS:
            lo, hi = IMAGE_FRACTIONS[split]
            pools[split] = SplitPool(
                (round(lo * n_images), round(hi * n_images)), tuple(by_split[split])
            )
    if config.extra:
        if "train" not in pools:
            raise DataError("--extra needs a train split (it draws from the training pool)")
        pools[EXTRA_SPLIT] = pools["train"]
    return pools


class _Cycle:
    """Draws items in a shuffled order, reshuffling when all have been used (reuse only when needed)."""

    def __init__(self, items: Sequence[Any], rng: np.random.Generator) -> None:
        self.items = list(items)
        self.rng = rng
        self.order: list[int] = []

    def next(self) -> Any:
        if not self.order:
            self.order = self.rng.permutation(len(self.items)).tolist()
        return self.items[self.order.pop()]


def make_plans(config: BuildConfig, source: SourceData) -> list[SamplePlan]:
    """Plans for all samples of all splits, in shard order."""
    pools = split_pools(source, config)
    plans: list[SamplePlan] = []
    for split in config.splits:
        plans.extend(_plan_split(split, pools[split], config, source))
    return plans


def _plan_split(
    split: str, pool: SplitPool, config: BuildConfig, source: SourceData
) -> list[SamplePlan]:
    n = config.split_size(split)
    rng = np.random.default_rng([config.seed, zlib.crc32(split.encode())])
    lo, hi = pool.images
    images = _Pools(
        {d: (np.flatnonzero(source.labels[lo:hi] == d) + lo).tolist() for d in range(10)},
        rng,
        split,
        "images",
    )
    recs: dict[int, list[Recording]] = {d: [] for d in range(10)}
    for rec in source.recordings:
        if rec.speaker in pool.speakers:
            recs[rec.digit].append(rec)
    recordings = _Pools(recs, rng, split, "recordings")
    rate = config.noise_rate(split)
    mix = np.asarray(config.noise_mix, dtype=np.float64) / sum(config.noise_mix)
    out = []
    for i in range(n):
        digit = int(rng.integers(10))
        motion = MOTIONS[int(rng.integers(len(MOTIONS)))]
        kind = NOISE_KINDS[int(rng.choice(3, p=mix))] if rng.random() < rate else None
        bad_text = kind in ("text", "both")
        bad_audio = kind in ("audio", "both")
        caption_digit = _other_digit(digit, rng) if bad_text else digit
        caption_motion = MOTIONS[int(rng.integers(len(MOTIONS)))] if bad_text else motion
        audio_digit = _other_digit(digit, rng) if bad_audio else digit
        recording: Recording = recordings.next(audio_digit)
        out.append(
            SamplePlan(
                id=f"{split}-{i:06d}",
                split=split,
                source="extra" if split == EXTRA_SPLIT else "clean",
                digit=digit,
                motion=motion,
                image_index=int(images.next(digit)),
                speaker=recording.speaker,
                audio_file=recording.name,
                audio_digit=audio_digit,
                caption_digit=caption_digit,
                caption_motion=caption_motion,
                misaligned_text=bad_text,
                misaligned_audio=bad_audio,
                captions=tuple(
                    sample_captions(
                        caption_digit, caption_motion, config.media.captions_per_clip, rng
                    )
                ),
                trajectory=sample_trajectory(motion, config.media, rng),
                audio_position=float(rng.random()),
                audio_peak=float(rng.uniform(0.5, 0.9)),
            )
        )
    return out


class _Pools:
    """One _Cycle per digit; a digit with nothing to draw is a clear error."""

    def __init__(
        self, items: dict[int, list[Any]], rng: np.random.Generator, split: str, what: str
    ) -> None:
        self.cycles = {d: _Cycle(v, rng) for d, v in items.items() if v}
        self.split = split
        self.what = what

    def next(self, digit: int) -> Any:
        if digit not in self.cycles:
            raise DataError(f"split {self.split!r} has no source {self.what} of digit {digit}")
        return self.cycles[digit].next()


def _other_digit(digit: int, rng: np.random.Generator) -> int:
    return (digit + int(rng.integers(1, 10))) % 10

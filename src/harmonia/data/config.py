"""One validated object holding every option of a dataset build."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from harmonia.data.spec import MediaSpec
from harmonia.errors import ConfigError

SPLITS: tuple[str, ...] = ("train", "val", "test")
EXTRA_SPLIT = "extra"
NOISE_KINDS: tuple[str, ...] = ("text", "audio", "both")


@dataclass(frozen=True)
class BuildConfig:
    """Options of `harmonia data build`; field names match the command-line flags.

    sizes: samples per split (train/val/test). single_split: put every speaker and image into this
    one split (e.g. "test" for evaluating on new recordings); only its size is used then.
    noise: fraction of triplets in noise_splits whose caption and/or audio come from another digit;
    noise_mix: probabilities of (text only, audio only, both) among those.
    extra / extra_noise: size and noise rate of the second, noisier source (split "extra"),
    drawn from the training speakers and images.
    """

    seed: int = 0
    sizes: dict[str, int] = field(default_factory=lambda: {"train": 3000, "val": 500, "test": 500})
    single_split: str | None = None
    noise: float = 0.2
    noise_mix: tuple[float, float, float] = (0.5, 0.25, 0.25)
    noise_splits: tuple[str, ...] = ("train",)
    extra: int = 0
    extra_noise: float = 0.5
    shard_size: int = 500
    media: MediaSpec = field(default_factory=MediaSpec)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def splits(self) -> tuple[str, ...]:
        """Splits this build writes, in order."""
        base = (self.single_split,) if self.single_split else SPLITS
        return (*base, EXTRA_SPLIT) if self.extra else base

    def split_size(self, split: str) -> int:
        return self.extra if split == EXTRA_SPLIT else self.sizes.get(split, 0)

    def noise_rate(self, split: str) -> float:
        """Configured misalignment rate of a split."""
        if split == EXTRA_SPLIT:
            return self.extra_noise
        return self.noise if split in self.noise_splits else 0.0

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid option."""
        self.media.validate()
        if self.single_split is not None and self.single_split not in SPLITS:
            raise ConfigError(
                f"--split must be one of {', '.join(SPLITS)}, got {self.single_split!r}"
            )
        unknown = sorted(set(self.sizes) - set(SPLITS))
        if unknown:
            raise ConfigError(f"unknown split size {unknown[0]!r}; splits are {', '.join(SPLITS)}")
        for split, n in self.sizes.items():
            if n < 0:
                raise ConfigError(f"--{split} must be >= 0, got {n}")
        if sum(self.split_size(s) for s in self.splits) == 0:
            raise ConfigError("the dataset would be empty: every split size is 0")
        for name, rate in (("--noise", self.noise), ("--extra-noise", self.extra_noise)):
            if not (math.isfinite(rate) and 0.0 <= rate <= 1.0):
                raise ConfigError(f"{name} must be in [0, 1], got {rate}")
        mix = self.noise_mix
        if len(mix) != 3 or any(not math.isfinite(p) or p < 0 for p in mix) or sum(mix) <= 0:
            raise ConfigError(
                f"--noise-mix must be three non-negative weights TEXT,AUDIO,BOTH, got {mix}"
            )
        bad = [s for s in self.noise_splits if s not in SPLITS]
        if bad:
            raise ConfigError(f"--noise-splits: unknown split {bad[0]!r}")
        if self.extra < 0:
            raise ConfigError(f"--extra must be >= 0, got {self.extra}")
        if self.shard_size < 1:
            raise ConfigError(f"--shard-size must be >= 1, got {self.shard_size}")
        if self.seed < 0:
            raise ConfigError(f"--seed must be >= 0, got {self.seed}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready options (recorded in summary.json)."""
        out = asdict(self)
        out["media"] = self.media.to_dict()
        out["noise_mix"] = list(self.noise_mix)
        out["noise_splits"] = list(self.noise_splits)
        return out

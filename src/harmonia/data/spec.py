"""What an AV-MNIST-T clip is made of: frame count, rates, sizes, caption count, motion classes."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from harmonia.errors import ConfigError

MOTIONS: tuple[str, ...] = ("left", "right", "up", "down", "zoom-in", "zoom-out")
DIGIT_WORDS: tuple[str, ...] = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
)
# Sample rates the AAC encoder accepts.
AAC_SAMPLE_RATES: tuple[int, ...] = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


@dataclass(frozen=True)
class MediaSpec:
    """Shape of every decoded sample: video uint8 [frames, height, width, 3], audio float32 [audio_samples].

    The default clip (2 s: 8 frames of 32x32 at 4 fps, audio at 8 kHz) is what the shipped CPU
    models learn the digit from within the demo's budget; the digit's glyph box is 14 px high.
    """

    frames: int = 8
    fps: int = 4
    height: int = 32
    width: int = 32
    sample_rate: int = 8000
    """FSDD's own rate: a higher one only upsamples the recordings (and costs decoding time)."""
    captions_per_clip: int = 4

    def __post_init__(self) -> None:
        self.validate()

    @property
    def audio_samples(self) -> int:
        """Audio length in samples: exactly the clip's duration at the sample rate."""
        return round(self.frames * self.sample_rate / self.fps)

    @property
    def seconds(self) -> float:
        return self.frames / self.fps

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field."""
        if self.frames < 1:
            raise ConfigError(f"frames must be >= 1, got {self.frames}")
        if not 1 <= self.fps <= 120:
            raise ConfigError(f"fps must be in [1, 120], got {self.fps}")
        for name, value in (("height", self.height), ("width", self.width)):
            if not 16 <= value <= 1024 or value % 2:
                raise ConfigError(f"{name} must be an even number in [16, 1024], got {value}")
        if self.sample_rate not in AAC_SAMPLE_RATES:
            raise ConfigError(
                f"sample_rate must be one of {', '.join(map(str, AAC_SAMPLE_RATES))}, got {self.sample_rate}"
            )
        if not 1 <= self.captions_per_clip <= 16:
            raise ConfigError(f"captions_per_clip must be in [1, 16], got {self.captions_per_clip}")

    def to_dict(self) -> dict[str, Any]:
        """The spec as stored in summary.json (with derived and fixed facts for readers)."""
        out: dict[str, Any] = asdict(self)
        out["audio_samples"] = self.audio_samples
        out["motions"] = list(MOTIONS)
        out["digit_words"] = list(DIGIT_WORDS)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MediaSpec:
        """Inverse of to_dict; derived entries are ignored."""
        fields = ("frames", "fps", "height", "width", "sample_rate", "captions_per_clip")
        missing = [f for f in fields if f not in data]
        if missing:
            raise ConfigError(f"media spec lacks {', '.join(missing)}")
        return cls(**{f: int(data[f]) for f in fields})

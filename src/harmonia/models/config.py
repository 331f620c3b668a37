"""ModelConfig: one validated object describing a VATT model (modalities, backbone, spaces).

Everything that names a modality lives here, in data: the model code loops over
``config.modalities`` and ``config.spaces``, so a fourth modality (say a second video stream of
kind ``video``) or a new size is a config change. Configs convert from plain mappings (YAML,
JSON) with `harmonia.typed_config.from_dict`, which names the offending key in its error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from harmonia.errors import ConfigError
from harmonia.typed_config import (
    FieldError,
    check,
    deep_merge,
    from_dict,
    require_non_negative,
    require_positive,
    require_range,
    suggest,
    to_dict,
)

ModalityKind = Literal["video", "audio", "text"]
FeatureKind = Literal["raw", "log_mel"]
FEATURE = "feature"
"""A head's ``source`` meaning the modality's pooled backbone feature (not another space)."""


@dataclass(frozen=True)
class LogMelConfig:
    """Settings of the log-mel audio front end (`harmonia.models.audio_features.LogMel`).

    Defaults are the usual speech analysis at 16 kHz: 25 ms Hann windows every 10 ms, a 512-point
    FFT and 64 mel bands up to the Nyquist frequency.
    """

    sample_rate: int = 16000
    window: int = 400
    """Samples per analysis window."""
    hop: int = 160
    """Samples between window starts (one spectrogram frame per hop)."""
    n_fft: int = 512
    mel_bins: int = 64
    f_min: float = 0.0
    f_max: float | None = None
    """Upper edge of the highest mel band in Hz (default: sample_rate / 2)."""
    time_masks: int = 0
    """SpecAugment in training: bands of up to ``time_width`` frames set to 0 per sample."""
    time_width: int = 0
    freq_masks: int = 0
    """SpecAugment in training: bands of up to ``freq_width`` mel bins set to 0 per sample."""
    freq_width: int = 0

    def validate(self) -> None:
        require_positive(self, "sample_rate", "window", "hop", "n_fft", "mel_bins")
        require_non_negative(self, "time_masks", "time_width", "freq_masks", "freq_width")
        check(
            self.window <= self.n_fft,
            "window",
            f"a window of {self.window} samples does not fit an FFT of n_fft = {self.n_fft}",
        )
        require_non_negative(self, "f_min")
        nyquist = self.sample_rate / 2
        check(
            self.top_frequency <= nyquist,
            "f_max",
            f"expected at most sample_rate / 2 = {nyquist:g} Hz, got {self.top_frequency:g}",
        )
        check(
            self.f_min < self.top_frequency,
            "f_min",
            f"expected below f_max ({self.top_frequency:g} Hz), got {self.f_min:g}",
        )

    @property
    def top_frequency(self) -> float:
        """``f_max``, or the Nyquist frequency when it is not set."""
        return self.sample_rate / 2 if self.f_max is None else self.f_max


@dataclass(frozen=True)
class StemConfig:
    """A convolutional front end (`harmonia.models.stems.ConvStem`) in front of the patches.

    Each of ``len(channels)`` stages is a same-padded conv with ``kernel``, GroupNorm with
    ``groups`` groups, GELU and a max-pool of ``pool`` (stride = size). Video stems are 3D over
    ``(frames, height, width)`` (``kernel: [1, 3, 3]`` is per-frame); audio stems are 2D over the
    log-mel ``(frames, mel_bins)`` and need ``features: log_mel``. The modality's ``patch`` stays
    in input units and must be a multiple of the total pooling ``pool ** len(channels)``.
    """

    channels: tuple[int, ...] = (16, 32, 64)
    kernel: tuple[int, ...] = (1, 3, 3)
    pool: tuple[int, ...] = (1, 2, 2)
    groups: int = 4

    def validate(self) -> None:
        check(len(self.channels) >= 1, "channels", "expected at least one stage")
        require_positive(self, "groups")
        for i, c in enumerate(self.channels):
            check(c > 0, f"channels[{i}]", f"expected a positive integer, got {c}")
            check(
                c % min(self.groups, c) == 0,
                "groups",
                f"{self.groups} groups must divide channels[{i}] = {c}",
            )
        check(
            len(self.kernel) in (2, 3), "kernel", f"expected 2 or 3 sizes, got {list(self.kernel)}"
        )
        check(
            len(self.pool) == len(self.kernel),
            "pool",
            f"expected {len(self.kernel)} sizes like kernel, got {list(self.pool)}",
        )
        for i, k in enumerate(self.kernel):
            check(k > 0 and k % 2 == 1, f"kernel[{i}]", f"expected an odd positive size, got {k}")
        for i, p in enumerate(self.pool):
            check(p > 0, f"pool[{i}]", f"expected a positive integer, got {p}")

    @property
    def downsample(self) -> tuple[int, ...]:
        """Total pooling along each axis over all stages."""
        return tuple(p ** len(self.channels) for p in self.pool)


@dataclass(frozen=True)
class ModalityConfig:
    """One input modality: its kind and the kind's tokenizer settings.

    ``shape`` is one sample's input shape as the collated batch holds it (video
    ``(frames, height, width, channels)``, audio ``(samples,)``); ``patch`` the patch the raw
    signal is cut into (video ``(t, h, w)``, audio ``(samples,)``). Text uses ``max_length``
    (words kept per caption). Video pixels become ``(x / 255 - mean) / std``.

    Audio ``features`` says what a patch holds: ``raw``, the waveform samples themselves (VATT);
    ``log_mel``, the log-mel spectrogram frames of those samples (``patch / hop`` frames of
    ``mel_bins`` values each, settings in ``log_mel``). Either way a patch spans ``patch``
    samples, so the number of tokens and their positions do not change.
    """

    kind: ModalityKind
    shape: tuple[int, ...] = ()
    patch: tuple[int, ...] = ()
    drop_token: float = 0.0
    """Fraction of tokens DropToken removes per sample in training mode (video/audio)."""
    max_length: int | None = None
    mean: float | None = None
    std: float | None = None
    features: FeatureKind = "raw"
    """``raw`` signal patches (every kind) or ``log_mel`` spectrogram patches (audio only)."""
    log_mel: LogMelConfig | None = None
    """Settings for ``features: log_mel`` (None: `LogMelConfig` defaults)."""
    stem: StemConfig | None = None
    """A convolutional front end before the patch projection (None: VATT's linear patches)."""

    def validate(self) -> None:
        self._validate_features()
        if self.kind == "text":
            check(self.shape == () and self.patch == (), "shape", "text takes no shape or patch")
            check(self.drop_token == 0.0, "drop_token", "DropToken applies to video and audio only")
            check(
                self.max_length is not None,
                "max_length",
                "text needs max_length (words per caption)",
            )
            require_positive(self, "max_length")
        else:
            self._validate_signal()
        if self.kind == "video":
            check(
                self.mean is not None and self.std is not None, "mean", "video needs mean and std"
            )
            require_positive(self, "std")
        else:
            check(
                self.mean is None and self.std is None,
                "mean",
                "mean/std are only used by kind video",
            )
        self._validate_stem()

    def _validate_features(self) -> None:
        if self.features == "raw":
            check(self.log_mel is None, "log_mel", "only used with features: log_mel")
            return
        check(self.kind == "audio", "features", f"log_mel is for kind audio, not {self.kind}")
        settings = self.spectrogram
        try:
            settings.validate()
        except FieldError as err:
            raise FieldError(f"log_mel.{err.key}", err.message) from None
        if self.patch:
            check(
                self.patch[0] % settings.hop == 0,
                "patch[0]",
                f"with features log_mel a patch must be whole frames: hop {settings.hop} "
                f"does not divide {self.patch[0]}",
            )

    def _validate_stem(self) -> None:
        if self.stem is None:
            return
        try:
            self.stem.validate()
        except FieldError as err:
            raise FieldError(f"stem.{err.key}", err.message) from None
        check(self.kind != "text", "stem", "a conv stem is for kind video or audio")
        dims = 3 if self.kind == "video" else 2
        check(
            len(self.stem.kernel) == dims,
            "stem.kernel",
            f"a {self.kind} stem is {dims}D: expected {dims} kernel sizes",
        )
        if self.kind == "audio":
            check(self.features == "log_mel", "stem", "an audio stem needs features: log_mel")
        pairs = zip(self.stem_input_patch, self.stem.downsample, strict=True)
        for axis, (size, down) in enumerate(pairs):
            check(
                size % down == 0,
                "stem.pool",
                f"total pooling {down} along axis {axis} does not divide the patch's {size}",
            )

    @property
    def stem_input_patch(self) -> tuple[int, ...]:
        """One patch in the stem's input units: video ``(t, h, w)``, audio ``(frames, mel_bins)``."""
        if self.kind == "audio":
            frames = self.patch[0] // self.spectrogram.hop if self.patch else 0
            return (frames, self.spectrogram.mel_bins)
        return tuple(self.patch)

    @property
    def spectrogram(self) -> LogMelConfig:
        """The log-mel settings in force (`LogMelConfig` defaults when ``log_mel`` is unset)."""
        return self.log_mel if self.log_mel is not None else LogMelConfig()

    def _validate_signal(self) -> None:
        video = self.kind == "video"
        want = "(frames, height, width, channels)" if video else "(samples,)"
        check(
            len(self.shape) == (4 if video else 1),
            "shape",
            f"expected {want}, got {list(self.shape)}",
        )
        for i, size in enumerate(self.shape):
            check(size > 0, f"shape[{i}]", f"expected a positive integer, got {size}")
        n_patch = len(self.shape) - 1 if video else 1
        check(
            len(self.patch) == n_patch, "patch", f"expected {n_patch} sizes, got {list(self.patch)}"
        )
        for i, (size, step) in enumerate(zip(self.shape, self.patch, strict=False)):
            check(step > 0, f"patch[{i}]", f"expected a positive integer, got {step}")
            check(size % step == 0, f"patch[{i}]", f"{step} does not divide shape[{i}] = {size}")
        require_range(self, "drop_token", 0.0, 1.0, high_open=True)
        check(self.max_length is None, "max_length", f"only used by kind text, not {self.kind}")

    @property
    def grid(self) -> tuple[int, ...]:
        """Number of patches along each patched axis (empty for text)."""
        return tuple(size // step for size, step in zip(self.shape, self.patch, strict=False))

    @property
    def patch_values(self) -> int:
        """Values in one patch (video: t*h*w*channels; audio: samples, or frames*mel_bins)."""
        n = 1
        if self.stem is not None:
            for size, down in zip(self.stem_input_patch, self.stem.downsample, strict=True):
                n *= size // down
            return n * self.stem.channels[-1]
        for step in self.patch:
            n *= step
        if self.features == "log_mel":
            return n // self.spectrogram.hop * self.spectrogram.mel_bins
        return n * (self.shape[-1] if self.kind == "video" else 1)


@dataclass(frozen=True)
class BackboneConfig:
    """The pre-LN transformer: one shared by all modalities (the paper's setting) or one each."""

    kind: Literal["modality_agnostic", "modality_specific"] = "modality_agnostic"
    width: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0

    def validate(self) -> None:
        require_positive(self, "width", "depth", "heads", "mlp_ratio")
        require_range(self, "dropout", 0.0, 1.0, high_open=True)
        check(
            self.width % self.heads == 0,
            "heads",
            f"{self.heads} heads must divide width {self.width}",
        )


@dataclass(frozen=True)
class HeadConfig:
    """How one modality reaches a common space: from its feature or from another space."""

    kind: Literal["linear", "mlp"] = "linear"
    source: str = FEATURE
    """``feature`` (the pooled backbone output) or the name of a space the modality is in."""
    hidden: int | None = None
    """Hidden width of an ``mlp`` head (default: the space's dim)."""

    def validate(self) -> None:
        check(
            self.hidden is None or self.kind == "mlp",
            "hidden",
            "only an mlp head has a hidden width",
        )
        if self.hidden is not None:
            require_positive(self, "hidden")


@dataclass(frozen=True)
class SpaceConfig:
    """A common embedding space (VATT's FAC): its width and a head per member modality."""

    dim: int
    heads: dict[str, HeadConfig]

    def validate(self) -> None:
        require_positive(self, "dim")
        check(len(self.heads) >= 1, "heads", "a space needs at least one modality")


@dataclass(frozen=True)
class ModelConfig:
    """A whole VATT model. Build one with `ModelConfig.named` or `ModelConfig.from_dict`."""

    modalities: dict[str, ModalityConfig]
    backbone: BackboneConfig
    spaces: dict[str, SpaceConfig]
    anchor: str = "video"
    """The modality whose pooled feature is `out.anchor` (shared by the losses; harmonized)."""

    def validate(self) -> None:
        names = list(self.modalities)
        check(len(names) >= 1, "modalities", "expected at least one modality")
        check(self.anchor in self.modalities, "anchor", _unknown(self.anchor, names, "modality"))
        for space, sc in self.spaces.items():
            for modality, head in sc.heads.items():
                key = f"spaces.{space}.heads.{modality}"
                check(modality in self.modalities, key, _unknown(modality, names, "modality"))
                if head.source != FEATURE:
                    src = self.spaces.get(head.source)
                    check(
                        src is not None and modality in src.heads,
                        f"{key}.source",
                        f"expected '{FEATURE}' or a space holding {modality}; got {head.source!r}",
                    )
        self.space_order()
        in_space = any(self.anchor in sc.heads for sc in self.spaces.values())
        check(in_space or not self.spaces, "anchor", f"{self.anchor!r} is in no space")

    def check(self) -> None:
        """Validate the whole tree (for configs built in Python); raises ConfigError."""
        parts: list[tuple[str, Any]] = [("backbone.", self.backbone), ("", self)]
        parts += [(f"modalities.{n}.", m) for n, m in self.modalities.items()]
        for space, sc in self.spaces.items():
            parts.append((f"spaces.{space}.", sc))
            parts += [(f"spaces.{space}.heads.{m}.", h) for m, h in sc.heads.items()]
        for prefix, part in parts:
            try:
                part.validate()
            except FieldError as err:
                raise ConfigError(f"model config: {prefix}{err.key}: {err.message}") from None

    def space_order(self) -> list[str]:
        """Spaces in an order where every head's source space comes first (raises on cycles)."""
        order: list[str] = []
        pending = dict(self.spaces)
        while pending:
            ready = [
                name
                for name, sc in pending.items()
                if all(h.source == FEATURE or h.source in order for h in sc.heads.values())
            ]
            check(bool(ready), "spaces", f"head sources form a cycle among {sorted(pending)}")
            for name in ready:
                order.append(name)
                del pending[name]
        return order

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-ready data that `from_dict` reads back equal."""
        data: dict[str, Any] = to_dict(self)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Convert and validate a plain mapping; errors name the key (ConfigError)."""
        return from_dict(cls, data)

    @classmethod
    def named(cls, size: str, **overrides: Any) -> ModelConfig:
        """A shipped size (``tiny``, ``small``, ``base``) with nested overrides merged in.

        Example: ``ModelConfig.named("tiny", backbone={"depth": 4},
        modalities={"video": {"drop_token": 0.5}})``.
        """
        from harmonia.models.sizes import SIZES

        if size not in SIZES:
            near = suggest(size, list(SIZES))
            hint = f" (did you mean {near!r}?)" if near else ""
            raise ConfigError(f"model size: unknown size {size!r}{hint}; known: {', '.join(SIZES)}")
        return cls.from_dict(deep_merge(SIZES[size], overrides))


def _unknown(value: str, known: list[str], what: str) -> str:
    return f"unknown {what} {value!r}; known: {', '.join(known)}"


__all__ = [
    "FEATURE",
    "BackboneConfig",
    "HeadConfig",
    "LogMelConfig",
    "ModalityConfig",
    "ModelConfig",
    "SpaceConfig",
    "StemConfig",
]

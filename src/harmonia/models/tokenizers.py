"""Raw-signal tokenizers (VATT): video voxel patches, audio waveform patches, words.

Each tokenizer does two things. `prepare` turns the collated batch's entry for its modality
(uint8 frames, a waveform, caption strings) into the tensor the module consumes plus a validity
mask (an all-zero video/audio or an empty caption means "missing"). The module call turns that
tensor into tokens [n, 1 + L, D]: patch/word embeddings plus learned position embeddings,
DropToken in training (the kept patches are taken before the projection, so dropped tokens cost
nothing there), and a learned aggregation token in front whose backbone output is the
modality's pooled feature.

Parameters live in nn.Linear and nn.Embedding (positions and the aggregation token are looked up
per sample) and, with a conv ``stem``, in batch-first convs and GroupNorm, so per-sample gradient
methods see every parameter through a layer that treats samples independently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from harmonia.errors import ConfigError
from harmonia.models.audio_features import LogMel, SpecAugment
from harmonia.models.config import ModalityConfig
from harmonia.models.droptoken import DropToken, take
from harmonia.models.stems import ConvStem
from harmonia.models.vocab import WordTokenizer


@dataclass
class Prepared:
    """A modality's batch entry made ready for its tokenizer module."""

    inputs: Tensor
    """What the module consumes: normalized frames, waveforms, or word ids [n, L]."""
    valid: Tensor
    """Bool, shape ``lead``: False where the input is missing."""
    lead: tuple[int, ...]
    """Leading shape of the pooled feature: (B,) or, for K captions per sample, (B, K)."""


def lookup(table: nn.Embedding, count: int, batch: int) -> Tensor:
    """Rows 0..count-1 of ``table`` for each of ``batch`` samples: [batch, count, D]."""
    index = torch.arange(count, device=table.weight.device)
    return table(index.expand(batch, count))


class ModalityTokenizer(nn.Module):
    """Base class: holds the aggregation token; subclasses embed their raw signal."""

    def __init__(self, name: str, config: ModalityConfig, width: int) -> None:
        super().__init__()
        self.name = name
        self.config = config
        self.aggregation = nn.Embedding(1, width)

    def prepare(self, raw: Any, device: torch.device, dtype: torch.dtype) -> Prepared:
        raise NotImplementedError

    def with_aggregation(self, tokens: Tensor) -> Tensor:
        """Prepend the aggregation token: [n, L, D] -> [n, 1 + L, D]."""
        return torch.cat([lookup(self.aggregation, 1, tokens.shape[0]), tokens], dim=1)

    def forward(self, inputs: Tensor) -> tuple[Tensor, Tensor | None]:
        """Tokens [n, 1 + L, D] and a mask [n, 1 + L] of real tokens (None: all real)."""
        raise NotImplementedError

    def check_signal(self, raw: Any) -> Tensor:
        """The raw tensor, after checking it against ``shape`` in the config."""
        if not isinstance(raw, Tensor):
            raise ConfigError(f"{self.name}: expected a tensor batch, got {type(raw).__name__}")
        want = tuple(self.config.shape)
        if raw.dim() != len(want) + 1 or tuple(raw.shape[1:]) != want:
            raise ConfigError(
                f"{self.name}: batch has shape {list(raw.shape)} but the model expects "
                f"[B, {', '.join(map(str, want))}] (modalities.{self.name}.shape)"
            )
        return raw


class VideoTokenizer(ModalityTokenizer):
    """Non-overlapping t x h x w voxel patches -> Linear, plus factorized (t, h, w) positions.

    With a ``stem`` the frames first go through a `ConvStem` and the patches are cut from its
    feature map (same token grid, ``patch / downsample`` feature cells per token).
    """

    def __init__(self, name: str, config: ModalityConfig, width: int) -> None:
        super().__init__(name, config, width)
        self.grid = config.grid
        self.stem = None if config.stem is None else ConvStem(config.shape[-1], config.stem)
        self.proj = nn.Linear(config.patch_values, width)
        self.pos_t, self.pos_h, self.pos_w = (nn.Embedding(n, width) for n in self.grid)
        self.drop = DropToken(config.drop_token)

    def prepare(self, raw: Any, device: torch.device, dtype: torch.dtype) -> Prepared:
        """uint8 frames [B, T, H, W, C] -> normalized patches [B, N, t*h*w*C].

        Float frames are taken as already scaled to [0, 1]. Patches are cut before the
        conversion to float, so the large video tensor is copied once at one byte per value.
        With a stem the result is the normalized frames [B, C, T, H, W] instead.
        """
        video = self.check_signal(raw).to(device)
        valid = video.flatten(1).any(dim=1)
        batch = video.shape[0]
        if self.stem is not None:
            patches = video.permute(0, 4, 1, 2, 3)
        else:
            (gt, gh, gw), (pt, ph, pw) = self.grid, self.config.patch
            patches = video.reshape(batch, gt, pt, gh, ph, gw, pw, -1)
            patches = patches.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(batch, gt * gh * gw, -1)
        assert self.config.mean is not None and self.config.std is not None
        scale = 1.0 / self.config.std / (255.0 if video.dtype == torch.uint8 else 1.0)
        x = patches.to(dtype=dtype, copy=True).mul_(scale)
        if self.config.mean:
            x.sub_(self.config.mean / self.config.std)
        return Prepared(x, valid, (batch,))

    def forward(self, inputs: Tensor) -> tuple[Tensor, Tensor | None]:
        """Patches [B, N, P] -> tokens [B, 1 + N', D] (N' = N, or fewer under DropToken)."""
        batch = inputs.shape[0]
        gt, gh, gw = self.grid
        if self.stem is not None:
            inputs = _cells_to_patches(self.stem(inputs), self.grid)
        pos = (
            lookup(self.pos_t, gt, batch)[:, :, None, None]
            + lookup(self.pos_h, gh, batch)[:, None, :, None]
            + lookup(self.pos_w, gw, batch)[:, None, None, :]
        )
        return self.with_aggregation(_kept_tokens(self, inputs, pos.flatten(1, 3))), None


class AudioTokenizer(ModalityTokenizer):
    """Non-overlapping waveform patches -> Linear, plus temporal positions.

    With ``features: log_mel`` a patch holds the log-mel frames of its samples instead of the
    samples themselves (computed in `prepare`, without parameters).
    """

    def __init__(self, name: str, config: ModalityConfig, width: int) -> None:
        super().__init__(name, config, width)
        self.stem = None if config.stem is None else ConvStem(1, config.stem)
        self.proj = nn.Linear(config.patch_values, width)
        self.pos = nn.Embedding(config.grid[0], width)
        self.drop = DropToken(config.drop_token)
        self.log_mel: LogMel | None = None
        self.augment: SpecAugment | None = None
        if config.features == "log_mel":
            s = config.spectrogram
            self.log_mel = LogMel(
                s.sample_rate, s.window, s.hop, s.n_fft, s.mel_bins, s.f_min, s.top_frequency
            )
            self.augment = SpecAugment(s.time_masks, s.time_width, s.freq_masks, s.freq_width)

    def prepare(self, raw: Any, device: torch.device, dtype: torch.dtype) -> Prepared:
        """Float waveform [B, N] in [-1, 1] -> the waveform, or its log-mel frames [B, F, M]."""
        audio = self.check_signal(raw).to(device=device, dtype=dtype)
        valid = audio.ne(0).any(dim=1)
        inputs = audio if self.log_mel is None else self.log_mel(audio)
        return Prepared(inputs, valid, (audio.shape[0],))

    def forward(self, inputs: Tensor) -> tuple[Tensor, Tensor | None]:
        batch = inputs.shape[0]
        if self.augment is not None:
            inputs = self.augment(inputs)
        if self.stem is not None:  # log-mel [B, F, M] -> cells [B, C, F', M'] -> [B, N, P]
            cells = self.stem(inputs.unsqueeze(1))
            patches = _cells_to_patches(cells.unsqueeze(-1), (self.config.grid[0], 1, 1))
        else:
            patches = inputs.reshape(batch, self.config.grid[0], -1)
        pos = lookup(self.pos, self.config.grid[0], batch)
        return self.with_aggregation(_kept_tokens(self, patches, pos)), None


class TextTokenizer(ModalityTokenizer):
    """Words -> ids (WordTokenizer) -> embeddings plus positions; padding is masked."""

    def __init__(self, name: str, config: ModalityConfig, width: int, words: WordTokenizer) -> None:
        super().__init__(name, config, width)
        assert config.max_length is not None
        self.words = words
        self.max_length = config.max_length
        self.embed = nn.Embedding(len(words), width)
        self.pos = nn.Embedding(config.max_length, width)

    def prepare(self, raw: Any, device: torch.device, dtype: torch.dtype) -> Prepared:
        """``list[str]`` (one caption each) or ``list[list[str]]`` (K each; ragged K is padded)."""
        captions, lead = _flatten_captions(self.name, raw)
        ids = self.words.encode(captions, self.max_length, device)
        valid = ids.ne(self.words.pad_id).any(dim=1)
        return Prepared(ids, valid.view(lead), lead)

    def forward(self, inputs: Tensor) -> tuple[Tensor, Tensor | None]:
        batch, length = inputs.shape
        tokens = self.embed(inputs) + lookup(self.pos, length, batch)
        real = inputs.ne(self.words.pad_id)
        mask = torch.cat([real.new_ones(batch, 1), real], dim=1)
        return self.with_aggregation(tokens), mask


def _kept_tokens(
    tokenizer: VideoTokenizer | AudioTokenizer, patches: Tensor, pos: Tensor
) -> Tensor:
    """``proj(patches) + pos`` [B, L', D] of the tokens the tokenizer's DropToken keeps; only the
    kept patches are projected (the projection is row-wise, so this equals dropping its outputs)."""
    keep = tokenizer.drop.keep(patches.shape[0], patches.shape[1], patches.device)
    return tokenizer.proj(take(patches, keep)) + take(pos, keep)


def _cells_to_patches(cells: Tensor, grid: tuple[int, ...]) -> Tensor:
    """A stem's feature map [B, C, T', H', W'] -> patches [B, gt*gh*gw, (T'/gt)(H'/gh)(W'/gw)C]."""
    batch, channels, t, h, w = cells.shape
    gt, gh, gw = grid
    x = cells.reshape(batch, channels, gt, t // gt, gh, h // gh, gw, w // gw)
    return x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(batch, gt * gh * gw, -1)


def _flatten_captions(name: str, raw: Any) -> tuple[list[str], tuple[int, ...]]:
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise ConfigError(
            f"{name}: expected a list of captions per sample, got {type(raw).__name__}"
        )
    if all(isinstance(c, str) for c in raw):
        return list(raw), (len(raw),)
    if not all(isinstance(c, Sequence) and not isinstance(c, str) for c in raw):
        raise ConfigError(f"{name}: expected list[str] or list[list[str]] captions")
    k = max((len(c) for c in raw), default=0)
    flat = [str(c[i]) if i < len(c) else "" for c in raw for i in range(max(k, 1))]
    return flat, (len(raw), max(k, 1))


def build_tokenizer(
    name: str, config: ModalityConfig, width: int, words: WordTokenizer | None
) -> ModalityTokenizer:
    """The tokenizer module for a modality of the config's kind."""
    if config.kind == "video":
        return VideoTokenizer(name, config, width)
    if config.kind == "audio":
        return AudioTokenizer(name, config, width)
    if words is None:
        raise ConfigError(f"modalities.{name}: a text modality needs a WordTokenizer")
    return TextTokenizer(name, config, width, words)

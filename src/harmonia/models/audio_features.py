"""Log-mel spectrogram front end for the audio tokenizer, in plain torch (no torchaudio).

A waveform ``[B, N]`` becomes log-mel frames ``[B, N / hop, mel_bins]``: Hann-windowed frames of
``window`` samples every ``hop`` samples (frame ``i`` starts at sample ``i * hop``; the signal is
zero-padded at the end so every frame is whole), the power spectrum of each by a real FFT of
``n_fft`` points, triangular filters equally spaced on the HTK mel scale
(``2595 log10(1 + f / 700)``) between ``f_min`` and ``f_max``, ``log(power + floor)``, then each
utterance normalized to zero mean and unit variance over all its frames and bins. Per-utterance
normalization removes loudness and recording gain, which carry no information about what was
said. The front end has no parameters (its window and filterbank are non-persistent buffers), so
saved weights are the same as with raw waveform patches of the same length.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

LOG_FLOOR = 1e-6
"""Added to the mel power before the log: -60 dB below a full-scale sine's power per bin."""
NORM_EPS = 1e-5
"""Added to an utterance's log-mel standard deviation (silence maps to zeros, not NaN)."""


def hz_to_mel(hz: Tensor | float) -> Tensor:
    """HTK mel scale."""
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(hz, dtype=torch.float64) / 700.0)


def mel_to_hz(mel: Tensor) -> Tensor:
    """Inverse of `hz_to_mel`."""
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(
    n_fft: int, mel_bins: int, sample_rate: int, f_min: float, f_max: float
) -> Tensor:
    """Triangular filters ``[mel_bins, n_fft // 2 + 1]`` (float64), peak 1 at each centre.

    Filter ``m`` rises linearly from mel point ``m`` to ``m + 1`` and falls to ``m + 2``, with
    ``mel_bins + 2`` points equally spaced in mel between ``f_min`` and ``f_max``.
    """
    low_mel, high_mel = float(hz_to_mel(f_min)), float(hz_to_mel(f_max))
    points = mel_to_hz(torch.linspace(low_mel, high_mel, mel_bins + 2, dtype=torch.float64))
    freqs = torch.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1, dtype=torch.float64)
    low, centre, high = points[:-2, None], points[1:-1, None], points[2:, None]
    rising = (freqs - low) / (centre - low)
    falling = (high - freqs) / (high - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0)


class LogMel(nn.Module):
    """Waveforms ``[B, N]`` -> per-utterance normalized log-mel frames ``[B, N // hop, mel_bins]``."""

    window: Tensor
    filterbank: Tensor

    def __init__(
        self,
        sample_rate: int,
        window: int,
        hop: int,
        n_fft: int,
        mel_bins: int,
        f_min: float,
        f_max: float,
    ) -> None:
        super().__init__()
        self.window_length, self.hop, self.n_fft = window, hop, n_fft
        # Periodic Hann (the usual STFT window): w[n] = sin^2(pi n / window).
        n = torch.arange(window, dtype=torch.float64)
        self.register_buffer("window", torch.sin(math.pi * n / window) ** 2, persistent=False)
        bank = mel_filterbank(n_fft, mel_bins, sample_rate, f_min, f_max)
        self.register_buffer("filterbank", bank, persistent=False)

    def forward(self, waveform: Tensor) -> Tensor:
        frames = waveform.shape[-1] // self.hop
        pad = max(0, (frames - 1) * self.hop + self.window_length - waveform.shape[-1])
        padded = nn.functional.pad(waveform, (0, pad))
        chunks = padded.unfold(-1, self.window_length, self.hop)[..., :frames, :]
        window = self.window.to(waveform.dtype)
        spectrum = torch.fft.rfft(chunks * window, n=self.n_fft)
        power = spectrum.real.square() + spectrum.imag.square()
        mel = power @ self.filterbank.to(waveform.dtype).T
        logmel = torch.log(mel + LOG_FLOOR)
        mean = logmel.mean(dim=(-2, -1), keepdim=True)
        std = logmel.std(dim=(-2, -1), keepdim=True)
        return (logmel - mean) / (std + NORM_EPS)


class SpecAugment(nn.Module):
    """Training-time time and frequency masks on log-mel frames (Park et al., Interspeech 2019).

    Each sample gets ``time_masks`` bands of up to ``time_width`` frames and ``freq_masks``
    bands of up to ``freq_width`` mel bins set to 0 (the per-utterance mean after
    normalization), widths and positions drawn per sample. With only a few training speakers
    this keeps the audio tower from keying on one speaker's spectral details. The identity in
    eval mode or with no masks; no parameters.
    """

    def __init__(self, time_masks: int, time_width: int, freq_masks: int, freq_width: int) -> None:
        super().__init__()
        self.bands = ((1, time_masks, time_width), (2, freq_masks, freq_width))

    def forward(self, logmel: Tensor) -> Tensor:
        """``[B, frames, mel_bins]`` -> the same, masked in training mode."""
        if not self.training:
            return logmel
        batch = logmel.shape[0]
        keep = torch.ones_like(logmel, dtype=torch.bool)
        for axis, count, width in self.bands:
            size = logmel.shape[axis]
            span = min(width, size)
            if count == 0 or span == 0:
                continue
            index = torch.arange(size, device=logmel.device)[None, :]
            for _ in range(count):
                w = torch.randint(0, span + 1, (batch, 1), device=logmel.device)
                start = (torch.rand(batch, 1, device=logmel.device) * (size - w + 1)).long()
                band = (index >= start) & (index < start + w)
                shape = [batch, 1, 1]
                shape[axis] = size
                keep &= ~band.view(shape)
        return logmel * keep

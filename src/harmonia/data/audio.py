"""Waveform maths in numpy: band-limited resampling, peak normalization, pad/crop to a fixed length."""

from __future__ import annotations

import math

import numpy as np

_HALF_TAPS = 16  # zero crossings of the sinc kernel on each side


def resample(wave: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Resample a mono float waveform with a Hann-windowed sinc (anti-aliased when downsampling)."""
    wave = np.asarray(wave, dtype=np.float64)
    if orig_rate == new_rate or wave.size == 0:
        return wave.astype(np.float32)
    g = math.gcd(orig_rate, new_rate)
    up, down = new_rate // g, orig_rate // g
    cutoff = min(1.0, up / down) * 0.97  # fraction of the input Nyquist kept
    width = _HALF_TAPS / cutoff
    reach = math.ceil(width)
    offsets = np.arange(-reach + 1, reach + 1)  # taps relative to floor(t)
    out_len = round(wave.size * up / down)
    n = np.arange(out_len)
    base = (n * down) // up
    phase = (n * down) % up
    # One kernel per fractional position p / up: there are only `up` distinct ones.
    dist = np.arange(up)[:, None] / up - offsets[None, :]
    table = (
        cutoff * np.sinc(cutoff * dist) * (0.5 + 0.5 * np.cos(np.pi * np.clip(dist / width, -1, 1)))
    )
    padded = np.concatenate([np.zeros(reach - 1), wave, np.zeros(reach + 1)])
    if up <= 8:  # few phases: one C-level correlation per phase
        out = np.empty(out_len)
        for p in range(up):
            chosen = phase == p
            full = np.correlate(padded, table[p], mode="valid")
            out[chosen] = full[base[chosen]]
        return out.astype(np.float32)
    values = padded[base[:, None] + offsets[None, :] + reach - 1]
    return np.einsum("nk,nk->n", values, table[phase]).astype(np.float32)


def normalize_peak(wave: np.ndarray, peak: float) -> np.ndarray:
    """Scale so that max |x| == peak (silence stays silence)."""
    top = float(np.max(np.abs(wave))) if wave.size else 0.0
    if top == 0.0:
        return wave.astype(np.float32)
    return (wave * (peak / top)).astype(np.float32)


def place(wave: np.ndarray, length: int, position: float) -> np.ndarray:
    """Pad or crop to exactly `length` samples.

    position in [0, 1] picks where the recording sits inside the window when it is shorter
    (0: at the start, 1: at the end), or which window is kept when it is longer.
    """
    out = np.zeros(length, dtype=np.float32)
    slack = abs(length - wave.size)
    shift = round(position * slack)
    if wave.size <= length:
        out[shift : shift + wave.size] = wave
    else:
        out[:] = wave[shift : shift + length]
    return out

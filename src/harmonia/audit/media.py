"""Embed sample media in HTML: frame thumbnail strips as PNG, waveforms as WAV, both as data: URIs."""

from __future__ import annotations

import base64
import io
import wave

import numpy as np
import numpy.typing as npt
from PIL import Image


def data_uri(mime: str, payload: bytes) -> str:
    """A base64 `data:` URI (what keeps the report one self-contained file)."""
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


def thumbnail_strip(frames: npt.ArrayLike, count: int = 6, height: int = 64) -> bytes:
    """PNG of `count` evenly spaced frames side by side; frames are uint8 [T, H, W, 3]."""
    clip = np.asarray(frames)
    if clip.ndim != 4 or clip.shape[-1] != 3 or clip.shape[0] == 0:
        raise ValueError(f"frames must be [T, H, W, 3], got {clip.shape}")
    picks = np.unique(np.linspace(0, clip.shape[0] - 1, num=min(count, clip.shape[0])).round())
    tiles = [clip[int(i)].astype(np.uint8) for i in picks]
    gap = np.full((clip.shape[1], 2, 3), 255, dtype=np.uint8)
    strip = np.concatenate([x for tile in tiles for x in (tile, gap)][:-1], axis=1)
    image = Image.fromarray(strip)
    scale = height / image.height
    image = image.resize((max(1, round(image.width * scale)), height), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def wav_bytes(waveform: npt.ArrayLike, sample_rate: int) -> bytes:
    """16-bit PCM mono WAV of a float waveform in [-1, 1] (values outside are clipped)."""
    wav = np.asarray(waveform, dtype=np.float64).reshape(-1)
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    pcm = (np.clip(np.nan_to_num(wav), -1.0, 1.0) * 32767).round().astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(int(sample_rate))
        out.writeframes(pcm.tobytes())
    return buf.getvalue()

"""Media embedding for the report: WAV bytes decode back to the waveform; strips keep frames."""

from __future__ import annotations

import io
import wave

import numpy as np
import pytest
from PIL import Image

from harmonia.audit.media import data_uri, thumbnail_strip, wav_bytes


def test_wav_round_trip_is_16_bit_exact_and_clips() -> None:
    t = np.linspace(0, 1, 800, endpoint=False)
    signal = 0.5 * np.sin(2 * np.pi * 5 * t)
    signal[0] = 3.0  # out of range: clipped, not wrapped
    with wave.open(io.BytesIO(wav_bytes(signal, 8000))) as fh:
        assert (fh.getnchannels(), fh.getsampwidth(), fh.getframerate()) == (1, 2, 8000)
        back = np.frombuffer(fh.readframes(fh.getnframes()), dtype="<i2") / 32767
    assert back[0] == 1.0
    assert np.abs(back[1:] - signal[1:]).max() <= 0.5 / 32767 + 1e-12
    with pytest.raises(ValueError):
        wav_bytes(signal, 0)


def test_thumbnail_strip_shows_evenly_spaced_frames() -> None:
    frames = np.zeros((16, 8, 8, 3), dtype=np.uint8)
    for i in range(16):
        frames[i] = i * 16  # each frame its own grey level
    image = Image.open(io.BytesIO(thumbnail_strip(frames, count=4, height=8))).convert("RGB")
    pixels = np.asarray(image)
    assert pixels.shape == (8, 4 * 8 + 3 * 2, 3)
    tiles = [pixels[0, x * 10, 0] for x in range(4)]
    assert tiles == [0, 5 * 16, 10 * 16, 15 * 16]
    with pytest.raises(ValueError):
        thumbnail_strip(np.zeros((4, 8, 8)))


def test_data_uri() -> None:
    assert data_uri("text/plain", b"hi") == "data:text/plain;base64,aGk="

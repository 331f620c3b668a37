"""Built-in fallback source: scikit-learn's bundled 8x8 digits and synthesized DTMF keypad tones.

Used only when no real source exists, so that `harmonia demo` runs anywhere. The audio is NOT
speech: each "speaker" is a synthetic tone generator with its own timing, loudness and detuning.
"""

from __future__ import annotations

import zlib

import numpy as np

from harmonia.data.source_data import Recording, SourceData

WARNING = (
    "WARNING: using the BUILT-IN fallback source (scikit-learn 8x8 digits + synthetic DTMF "
    "keypad tones). The audio is NOT speech; results are for smoke-testing only. "
    "Run `harmonia data fetch` or pass --source DIR for the real MNIST + FSDD data."
)
SAMPLE_RATE = 8000
SPEAKERS = ("dtmf-a", "dtmf-b", "dtmf-c", "dtmf-d", "dtmf-e")
TAKES = 20
# Standard DTMF (row, column) frequencies of the keypad key for each digit.
_ROWS = (697.0, 770.0, 852.0, 941.0)
_COLS = (1209.0, 1336.0, 1477.0)
_KEYS = {0: (3, 1), 1: (0, 0), 2: (0, 1), 3: (0, 2), 4: (1, 0), 5: (1, 1), 6: (1, 2)}
_KEYS |= {7: (2, 0), 8: (2, 1), 9: (2, 2)}


def builtin_source() -> SourceData:
    """8x8 digits upscaled to 28x28 (white on black) and 5 x 10 x 20 synthetic tone recordings."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = np.asarray(digits.images, dtype=np.float32) / 16.0  # [N, 8, 8] in [0, 1]
    images = (_upscale(small, 20) * 255).round().astype(np.uint8)
    padded = np.zeros((images.shape[0], 28, 28), dtype=np.uint8)
    padded[:, 4:24, 4:24] = images  # MNIST keeps a 4-px empty border
    recordings = [
        Recording(d, s, f"{d}_{s}_{t}.wav")
        for s in SPEAKERS
        for d in range(10)
        for t in range(TAKES)
    ]
    return SourceData(
        kind="builtin",
        root=None,
        images=padded,
        labels=np.asarray(digits.target, dtype=np.int64),
        recordings=recordings,
        load_waveform=dtmf_recording,
        description={
            "kind": "builtin",
            "root": None,
            "mnist_images": "sklearn.datasets.load_digits (8x8, upscaled)",
            "mnist_count": int(padded.shape[0]),
            "recordings": len(recordings),
            "speakers": list(SPEAKERS),
            "warning": WARNING,
        },
    )


def dtmf_recording(rec: Recording) -> tuple[np.ndarray, int]:
    """A deterministic DTMF tone burst for the recording's digit, varied by speaker and take."""
    rng = np.random.default_rng(zlib.crc32(rec.name.encode()))
    voice = np.random.default_rng(zlib.crc32(rec.speaker.encode()))
    detune = 1.0 + voice.uniform(-0.03, 0.03)
    base_len = voice.uniform(0.3, 0.6)
    seconds = base_len * rng.uniform(0.8, 1.25)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    row, col = _KEYS[rec.digit]
    tone = np.sin(2 * np.pi * _ROWS[row] * detune * t) + np.sin(2 * np.pi * _COLS[col] * detune * t)
    envelope = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.02)  # 20 ms fade in/out
    noise = rng.normal(0.0, voice.uniform(0.02, 0.08), t.size)
    wave = 0.4 * tone * envelope * rng.uniform(0.6, 1.0) + noise
    return np.clip(wave, -1, 1).astype(np.float32), SAMPLE_RATE


def _upscale(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upscaling of [N, h, w] images to [N, size, size]."""
    _, h, w = images.shape
    ys = (np.arange(size) + 0.5) * h / size - 0.5
    xs = (np.arange(size) + 0.5) * w / size - 0.5
    y0 = np.clip(np.floor(ys).astype(int), 0, h - 1)
    x0 = np.clip(np.floor(xs).astype(int), 0, w - 1)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy = np.clip(ys - y0, 0, 1)[:, None]
    fx = np.clip(xs - x0, 0, 1)[None, :]
    top = images[:, y0][:, :, x0] * (1 - fx) + images[:, y0][:, :, x1] * fx
    bottom = images[:, y1][:, :, x0] * (1 - fx) + images[:, y1][:, :, x1] * fx
    return top * (1 - fy) + bottom * fy

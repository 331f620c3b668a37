"""Media pieces: mp4 round trip for any spec, resampling, pad/crop, captions, rendering."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harmonia.data.audio import place, resample
from harmonia.data.captions import (
    FRAMES,
    MOTION_PHRASES,
    SUBJECTS,
    caption,
    digits_in_caption,
    motions_in_caption,
    sample_captions,
)
from harmonia.data.media import CorruptMedia, decode_mp4, encode_mp4
from harmonia.data.render import Trajectory, render_frames, sample_trajectory
from harmonia.data.spec import MOTIONS, MediaSpec
from harmonia.errors import ConfigError


@pytest.mark.parametrize(
    "spec",
    [
        MediaSpec(),
        MediaSpec(frames=10, fps=5, height=32, width=48, sample_rate=22050),
        MediaSpec(frames=1, fps=1, sample_rate=8000),
    ],
)
def test_mp4_round_trip_has_exact_shapes_and_aligned_audio(spec: MediaSpec) -> None:
    video = np.zeros((spec.frames, spec.height, spec.width, 3), np.uint8)
    for t in range(spec.frames):
        video[t, 4:12, 2 + t : 10 + t] = 220
    n = spec.audio_samples
    t = np.arange(n) / spec.sample_rate
    audio = (0.6 * np.sin(2 * np.pi * (300 + 900 * t / t[-1]) * t) * (t > 0.2 * t[-1])).astype(
        np.float32
    )
    audio *= np.exp(-(((t - 0.5 * t[-1]) / (0.2 * t[-1])) ** 2)).astype(np.float32)
    data = encode_mp4(video, audio, spec)
    assert data == encode_mp4(video, audio, spec)  # byte-identical for identical input
    got_video, got_audio = decode_mp4(data, spec)
    assert got_video.shape == video.shape and got_video.dtype == np.uint8
    assert np.abs(got_video.astype(int) - video).max() <= 12
    assert got_audio.shape == (n,) and got_audio.dtype == np.float32
    assert np.corrcoef(got_audio, audio)[0, 1] > 0.99
    shifted = np.corrcoef(got_audio[1024:], audio[:-1024])[0, 1] if n > 2048 else 0.0
    assert shifted < 0.5  # no leftover AAC priming delay


def test_decode_rejects_a_spec_mismatch() -> None:
    size = {"height": 64, "width": 64}
    spec = MediaSpec(frames=4, fps=4, sample_rate=8000, **size)
    data = encode_mp4(
        np.zeros((4, 64, 64, 3), np.uint8), np.zeros(spec.audio_samples, np.float32), spec
    )
    with pytest.raises(CorruptMedia, match="32x32"):
        decode_mp4(data, MediaSpec(frames=4, fps=4, sample_rate=8000, height=32, width=32))
    with pytest.raises(CorruptMedia, match="4 frames, expected 8"):
        decode_mp4(data, MediaSpec(frames=8, fps=8, sample_rate=8000, **size))
    with pytest.raises(CorruptMedia, match="Hz"):
        decode_mp4(data, MediaSpec(frames=4, fps=4, sample_rate=16000, **size))


@pytest.mark.parametrize(
    ("orig", "new"), [(8000, 16000), (16000, 8000), (44100, 16000), (8000, 22050)]
)
def test_resample_keeps_a_sine(orig: int, new: int) -> None:
    freq = 440.0
    x = np.sin(2 * np.pi * freq * np.arange(orig) / orig)
    y = resample(x, orig, new)
    assert y.shape == (new,)
    ref = np.sin(2 * np.pi * freq * np.arange(new) / new)
    assert np.abs(y - ref)[100:-100].max() < 1e-3


def test_resample_removes_what_the_new_rate_cannot_hold() -> None:
    x = np.sin(2 * np.pi * 7000 * np.arange(16000) / 16000)  # above 4 kHz Nyquist of 8 kHz
    assert np.abs(resample(x, 16000, 8000))[100:-100].max() < 1e-3


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 300), st.integers(1, 300), st.floats(0, 1))
def test_place_always_returns_the_length_and_keeps_the_content(
    size: int, length: int, position: float
) -> None:
    wave = np.arange(1, size + 1, dtype=np.float32)
    out = place(wave, length, position)
    assert out.shape == (length,)
    kept = out[out != 0]
    assert kept.size == min(size, length)
    assert np.all(np.diff(kept) == 1)  # one contiguous piece of the recording


def test_every_caption_names_its_digit_and_motion_only() -> None:
    for digit in range(10):
        for motion in MOTIONS:
            for s in range(len(SUBJECTS)):
                for p in range(len(MOTION_PHRASES[motion])):
                    for f in range(len(FRAMES)):
                        text = caption(digit, motion, s, p, f)
                        assert digits_in_caption(text) == {digit}, text
                        assert motions_in_caption(text) == {motion}, text


def test_sample_captions_are_distinct_and_bounded() -> None:
    rng = np.random.default_rng(0)
    caps = sample_captions(7, "left", 16, rng)
    assert len(set(caps)) == 16
    assert all(digits_in_caption(c) == {7} and motions_in_caption(c) == {"left"} for c in caps)
    with pytest.raises(ValueError):
        sample_captions(7, "left", 10_000, rng)
    with pytest.raises(ConfigError, match="captions_per_clip"):
        MediaSpec(captions_per_clip=17)


def test_render_identity_copies_the_glyph_and_trajectories_stay_in_class() -> None:
    spec = MediaSpec(height=64, width=64)  # a 28-px glyph at scale 1
    glyph = np.random.default_rng(0).integers(0, 256, (28, 28)).astype(np.uint8)
    frames = render_frames(glyph, Trajectory((32.0, 32.0), (32.0, 32.0), 28.0, 28.0, 1.0), spec)
    assert np.array_equal(frames[0, 18:46, 18:46, 0], glyph)
    assert frames[0, :18].max() == 0 and np.array_equal(frames[..., 0], frames[..., 2])
    rng = np.random.default_rng(1)
    for _ in range(50):
        for motion in MOTIONS:
            tr = sample_trajectory(motion, spec, rng)
            (x0, y0), (x1, y1) = tr.start, tr.end
            expected = {
                "left": x1 < x0 and y1 == y0,
                "right": x1 > x0 and y1 == y0,
                "up": y1 < y0 and x1 == x0,
                "down": y1 > y0 and x1 == x0,
                "zoom-in": tr.end_size > tr.start_size,
                "zoom-out": tr.end_size < tr.start_size,
            }[motion]
            assert expected, (motion, tr)
            for x, y in (tr.start, tr.end):
                assert 0 < x < spec.width and 0 < y < spec.height

"""Real-world media for the import tests, written with PyAV: containers, codecs, layouts, rates.

Each video shows a colour that changes every second (so a test can tell which second a clip was
cut from) and, when it has sound, a tone whose pitch changes every second.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

COLOURS = np.array(
    [[220, 30, 30], [30, 220, 30], [30, 30, 220], [220, 220, 30], [30, 220, 220], [220, 30, 220]],
    dtype=np.uint8,
)
"""The colour of second s is COLOURS[s % 6]."""


def write_video(
    path: Path,
    *,
    seconds: float = 4.0,
    fps: float = 25,
    size: tuple[int, int] = (320, 180),
    container: str = "mp4",
    codec: str = "libx264",
    audio_codec: str | None = "aac",
    rate: int = 44100,
    layout: str = "stereo",
    variable_rate: bool = False,
    pix_fmt: str = "yuv420p",
) -> Path:
    """A test video: ``size`` (width, height), ``fps`` (jittered timestamps if variable_rate)."""
    width, height = size
    with av.open(str(path), "w", format=container) as out:
        video = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        video.width, video.height = width, height
        video.pix_fmt = pix_fmt
        video.time_base = Fraction(1, 1000)
        audio = None
        if audio_codec is not None:
            audio = out.add_stream(audio_codec, rate=rate)
            audio.layout = layout
        rng = np.random.default_rng(0)
        count = int(seconds * fps)
        for i in range(count):
            t = i / fps
            if variable_rate and 0 < i < count - 1:
                t += float(rng.uniform(-0.3, 0.3)) / fps
            rgb = np.empty((height, width, 3), dtype=np.uint8)
            rgb[:] = COLOURS[int(t) % len(COLOURS)]
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt)
            frame.pts = round(t * 1000)
            frame.time_base = Fraction(1, 1000)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if audio is not None:
            _write_tone(out, audio, seconds, rate, layout)
    return path


def _write_tone(
    out: av.container.OutputContainer,
    stream: av.AudioStream,
    seconds: float,
    rate: int,
    layout: str,
) -> None:
    channels = 2 if layout == "stereo" else 1
    total = int(seconds * rate)
    t = np.arange(total) / rate
    pitch = 200.0 + 100.0 * np.floor(t)
    wave = (0.3 * np.sin(2 * np.pi * pitch * t)).astype(np.float32)
    frame_size = stream.codec_context.frame_size or 1024
    for at in range(0, total, frame_size):
        chunk = wave[at : at + frame_size]
        data = np.ascontiguousarray(np.tile(chunk, (channels, 1)))  # planar float: PyAV converts
        frame = av.AudioFrame.from_ndarray(data, format="fltp", layout=layout)
        frame.sample_rate = rate
        frame.pts = at
        frame.time_base = Fraction(1, rate)
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))

"""Cut one clip out of any media file PyAV decodes, at a dataset's media spec.

A user's videos come in any container (mp4/mov, mkv/webm, avi), codec, frame rate (also
variable), resolution, aspect ratio and audio layout. `cut_clip` takes the span
``[start, start + spec.seconds)`` and returns exactly the spec's shape: ``spec.frames`` frames
sampled at ``spec.fps`` (each the last frame shown at its time; a span that runs past the end
repeats the last frame), scaled so the shorter side fits and centre-cropped (``fit="crop"``) or
letterboxed (``fit="pad"``), and the first audio stream mixed to mono and resampled to
``spec.sample_rate`` (or None when the file has no audio: the clip is stored without audio and
the model masks its audio losses).

The container format is chosen from the file's first bytes, never probed by FFmpeg: probing
can open other inputs (an ``ffconcat`` list names local files), which a user's data must not.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np

from harmonia.data.spec import MediaSpec

Fit = Literal["crop", "pad"]
FITS: tuple[str, ...] = ("crop", "pad")
MAX_PIXELS = 4096 * 4096
"""Frames larger than this (from the stream's header) are refused before decoding."""
MAX_DECODED_FRAMES = 5000
"""Frames decoded for one clip at most (a stream seeking back to a far keyframe, a bomb)."""


END_SLACK = 0.5
"""A clip may start this many seconds after the last frame's time (which it then shows)."""


class MediaRefused(Exception):
    """The file cannot give a clip (not media, no video, too large, nothing in the span)."""


@dataclass(frozen=True)
class Clip:
    """A clip at the spec: video uint8 [T, H, W, 3], audio float32 [N] or None (no audio)."""

    video: np.ndarray
    audio: np.ndarray | None
    duration: float | None
    """The source's duration in seconds, when its header says."""


def container_format(head: bytes | Path) -> str:
    """The demuxer for a file (or the bytes it starts with): mp4/mov, matroska/webm or avi."""
    if isinstance(head, Path):
        with head.open("rb") as fh:
            head = fh.read(16)
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return "mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    raise MediaRefused("not an mp4/mov, mkv/webm or avi file")


def cut_clip(
    source: Path | bytes,
    spec: MediaSpec,
    start: float = 0.0,
    *,
    fit: Fit = "crop",
    video_stream: int = 0,
    audio_stream: int = 0,
) -> Clip:
    """The clip of ``source`` (a path or the file's bytes) starting at ``start`` seconds."""
    if fit not in FITS:
        raise ValueError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
    fmt = container_format(source[:16] if isinstance(source, bytes) else source)
    video, duration = _video(_open(source, fmt), spec, start, fit, video_stream)
    audio = _audio(_open(source, fmt), spec, start, audio_stream)
    return Clip(video, audio, duration)


def _open(source: Path | bytes, fmt: str) -> Any:
    target: Any = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    try:
        return av.open(target, mode="r", format=fmt)
    except (av.error.FFmpegError, ValueError, OSError) as err:
        raise MediaRefused(f"not readable as {fmt} ({_short(err)})") from None


def _video(
    container: Any, spec: MediaSpec, start: float, fit: Fit, index: int
) -> tuple[np.ndarray, float | None]:
    with container:
        streams = container.streams.video
        if len(streams) <= index:
            raise MediaRefused(f"no video stream {index} ({len(streams)} found)")
        stream = streams[index]
        width, height = stream.codec_context.width, stream.codec_context.height
        if width * height > MAX_PIXELS:
            raise MediaRefused(f"video frames of {width}x{height} are larger than allowed")
        stream.codec_context.thread_count = 1
        duration = float(container.duration / av.time_base) if container.duration else None
        targets = start + np.arange(spec.frames) / spec.fps
        frames: list[np.ndarray | None] = [None] * spec.frames
        shown: np.ndarray | None = None  # the newest frame at or before the next target
        filled = decoded = 0
        last = -np.inf  # the newest frame's time
        try:
            _seek(container, stream, start)
            for frame in container.decode(stream):
                decoded += 1
                if decoded > MAX_DECODED_FRAMES:
                    raise MediaRefused(
                        f"more than {MAX_DECODED_FRAMES} frames before the clip ended"
                    )
                if frame.width * frame.height > MAX_PIXELS:
                    raise MediaRefused(f"a frame of {frame.width}x{frame.height} is too large")
                when = frame.time if frame.time is not None else 0.0
                last = max(last, when)
                while filled < spec.frames and when > targets[filled] + 1e-6:
                    frames[filled] = shown
                    filled += 1
                if filled == spec.frames:
                    break
                shown = _fit(frame, spec, fit)
        except (av.error.FFmpegError, ValueError, OSError) as err:
            raise MediaRefused(f"video decoding failed ({_short(err)})") from None
    if last < start - END_SLACK:
        raise MediaRefused(f"no video frame at or after {start:g} s (the video ends before)")
    while filled < spec.frames:  # the span runs past the end: hold the last frame
        frames[filled] = shown
        filled += 1
    first = next((f for f in frames if f is not None), None)
    if first is None:
        raise MediaRefused(f"no video frame at or after {start:g} s")
    return np.stack([first if f is None else f for f in frames]), duration


def _fit(frame: Any, spec: MediaSpec, fit: Fit) -> np.ndarray:
    """The frame at the spec's size: scaled to cover (crop) or fit inside (pad), centred."""
    scale = (max if fit == "crop" else min)(spec.width / frame.width, spec.height / frame.height)
    width = max(2, round(frame.width * scale))
    height = max(2, round(frame.height * scale))
    rgb = frame.reformat(width=width, height=height, format="rgb24").to_ndarray()
    out = np.zeros((spec.height, spec.width, 3), dtype=np.uint8)
    top, left = (height - spec.height) // 2, (width - spec.width) // 2
    if fit == "crop":
        out[:] = rgb[top : top + spec.height, left : left + spec.width]
    else:
        out[-top : -top + height, -left : -left + width] = rgb
    return out


def _audio(container: Any, spec: MediaSpec, start: float, index: int) -> np.ndarray | None:
    with container:
        streams = container.streams.audio
        if len(streams) <= index:
            return None
        stream = streams[index]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=spec.sample_rate)
        out = np.zeros(spec.audio_samples, dtype=np.float32)
        first = round(start * spec.sample_rate)  # the clip's first sample, on the output clock
        try:
            _seek(container, stream, start)
            for frame in container.decode(stream):
                for mono in resampler.resample(frame):
                    if _place(mono, out, first, spec):
                        return np.clip(out, -1.0, 1.0)
            for mono in resampler.resample(None):
                _place(mono, out, first, spec)
        except (av.error.FFmpegError, ValueError, OSError) as err:
            raise MediaRefused(f"audio decoding failed ({_short(err)})") from None
    return np.clip(out, -1.0, 1.0)


def _place(frame: Any, out: np.ndarray, first: int, spec: MediaSpec) -> bool:
    """Copy the part of a mono frame inside the clip into ``out``; True once past its end."""
    samples = frame.to_ndarray().reshape(-1)
    at = round(frame.time * spec.sample_rate) if frame.time is not None else first
    lo, hi = max(at, first), min(at + samples.size, first + out.size)
    if hi > lo:
        out[lo - first : hi - first] = samples[lo - at : hi - at]
    return at + samples.size >= first + out.size


def _seek(container: Any, stream: Any, start: float) -> None:
    if start > 0 and stream.time_base is not None:
        container.seek(int(start / stream.time_base), stream=stream, backward=True)


def _short(err: BaseException) -> str:
    return str(err).splitlines()[0][:120] if str(err) else type(err).__name__

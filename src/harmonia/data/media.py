"""Encode and decode one clip as an .mp4 (H.264 video + AAC mono audio) with PyAV, in memory."""

from __future__ import annotations

import io
from fractions import Fraction
from typing import Any

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from harmonia.data.spec import MediaSpec

AUDIO_BITRATE = 32_000


class CorruptMedia(Exception):
    """The bytes are not a clip of the expected shape; the message says why."""


def encode_mp4(video: np.ndarray, audio: np.ndarray | None, spec: MediaSpec) -> bytes:
    """H.264 (yuv420p, x264 ultrafast, crf 20) + AAC (mono, 32 kb/s) in an mp4; audio=None writes video only.

    Single-threaded codecs keep the bytes identical for identical inputs.
    """
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        vstream = container.add_stream(
            "libx264", rate=spec.fps, options={"preset": "ultrafast", "crf": "20", "threads": "1"}
        )
        vstream.width = spec.width
        vstream.height = spec.height
        vstream.pix_fmt = "yuv420p"
        vstream.codec_context.thread_count = 1
        astream = None
        if audio is not None:
            astream = container.add_stream(
                "aac", rate=spec.sample_rate, options={"aac_coder": "fast"}
            )
            astream.layout = "mono"
            astream.bit_rate = AUDIO_BITRATE
        for i, rgb in enumerate(video):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, spec.fps)
            container.mux(vstream.encode(frame))
        container.mux(vstream.encode(None))
        if astream is not None and audio is not None:
            samples = np.ascontiguousarray(np.clip(audio, -1.0, 1.0), dtype=np.float32)[None, :]
            aframe = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
            aframe.sample_rate = spec.sample_rate
            aframe.pts = 0
            aframe.time_base = Fraction(1, spec.sample_rate)
            container.mux(astream.encode(aframe))
            container.mux(astream.encode(None))
    return buf.getvalue()


def decode_mp4(
    data: bytes, spec: MediaSpec, *, audio: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Decode to (video uint8 [T, H, W, 3], audio float32 [N]) of exactly the spec's shape.

    Audio samples are placed by their timestamps, so the AAC encoder's priming and padding
    never shift or lengthen the waveform. ``audio=False`` is a clip stored without sound (an
    imported video that had none): its waveform is all zeros, which the model treats as
    missing. Raises CorruptMedia for anything else.
    """
    try:
        # the intended demuxer only: probing costs more than decoding a clip, and a probed
        # format may open nested inputs (an ffconcat list naming other local files)
        container = av.open(io.BytesIO(data), mode="r", format="mp4")
    except (av.error.FFmpegError, ValueError, OSError) as err:
        raise CorruptMedia(f"not a readable mp4 ({_short(err)})") from None
    with container:
        if not container.streams.video:
            raise CorruptMedia("no video stream")
        if audio and not container.streams.audio:
            raise CorruptMedia("no audio stream")
        if not audio and container.streams.audio:
            raise CorruptMedia("an audio stream in a clip stored without audio")
        vstream = container.streams.video[0]
        astream = container.streams.audio[0] if audio else None
        _check_headers(vstream, astream, spec)
        vstream.codec_context.thread_count = 1
        frames: list[np.ndarray] = []
        to_rgb = VideoReformatter()  # one conversion context for all frames (much faster)
        waveform = np.zeros(spec.audio_samples, dtype=np.float32)
        covered = 0 if audio else spec.audio_samples
        try:
            for packet in container.demux(*[s for s in (vstream, astream) if s is not None]):
                if packet.stream is astream and _after_clip(packet, spec):
                    continue  # audio past the clip's end: not decoded at all
                for frame in packet.decode():
                    if isinstance(frame, av.VideoFrame):
                        # checked per frame before converting: the stream may change size, and
                        # a clip longer than the spec is rejected at its first extra frame
                        if (frame.height, frame.width) != (spec.height, spec.width):
                            raise CorruptMedia(
                                f"video is {frame.height}x{frame.width}, "
                                f"expected {spec.height}x{spec.width}"
                            )
                        if len(frames) == spec.frames:
                            raise CorruptMedia(f"video has more than {spec.frames} frames")
                        frames.append(to_rgb.reformat(frame, format="rgb24").to_ndarray())
                    elif isinstance(frame, av.AudioFrame):
                        covered += _place_audio(frame, waveform, spec)
        except (av.error.FFmpegError, ValueError, OSError) as err:
            raise CorruptMedia(f"decoding failed ({_short(err)})") from None
    if len(frames) != spec.frames:
        raise CorruptMedia(f"video has {len(frames)} frames, expected {spec.frames}")
    if covered < spec.audio_samples:
        raise CorruptMedia(f"audio has {covered} samples, expected {spec.audio_samples}")
    return np.stack(frames), np.clip(waveform, -1.0, 1.0)


def _check_headers(vstream: Any, astream: Any, spec: MediaSpec) -> None:
    """Reject from the container's headers what decoding would reject, before decoding.

    A few kilobytes of mp4 can declare 4096x2160 frames by the hundred: decoding them first
    would cost gigabytes. Values a header leaves unknown (0) are checked while decoding.
    """
    width, height = vstream.codec_context.width, vstream.codec_context.height
    if width and height and (height, width) != (spec.height, spec.width):
        raise CorruptMedia(f"video is {height}x{width}, expected {spec.height}x{spec.width}")
    if vstream.frames and vstream.frames != spec.frames:
        raise CorruptMedia(f"video has {vstream.frames} frames, expected {spec.frames}")
    rate = astream.codec_context.sample_rate if astream is not None else 0
    if rate and rate != spec.sample_rate:
        raise CorruptMedia(f"audio is {rate} Hz, expected {spec.sample_rate}")


def _after_clip(packet: Any, spec: MediaSpec) -> bool:
    """True for an audio packet that starts after the clip's last sample."""
    if packet.pts is None or packet.time_base is None:
        return False
    base = packet.time_base
    return bool(
        packet.pts * spec.sample_rate * base.numerator >= spec.audio_samples * base.denominator
    )


def _place_audio(frame: av.AudioFrame, out: np.ndarray, spec: MediaSpec) -> int:
    """Write a decoded frame (mixed to mono) at its timestamp; return how many samples landed in `out`."""
    if frame.sample_rate != spec.sample_rate:
        raise CorruptMedia(f"audio is {frame.sample_rate} Hz, expected {spec.sample_rate}")
    samples = frame.to_ndarray().astype(np.float32, copy=False)
    channels = len(frame.layout.channels)
    if channels == 1:
        mono = samples.reshape(-1)
    elif frame.format.is_planar:
        mono = samples.mean(axis=0)
    else:  # packed: channels interleaved in one row
        mono = samples.reshape(-1, channels).mean(axis=1)
    start = 0
    if frame.pts is not None and frame.time_base is not None:
        base = frame.time_base
        start = round(frame.pts * spec.sample_rate * base.numerator / base.denominator)
    lo, hi = max(start, 0), min(start + mono.size, out.size)
    if hi <= lo:
        return 0
    out[lo:hi] = mono[lo - start : hi - start]
    return hi - lo


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__

"""Timed captions of long narrated videos: sidecar ``.srt`` / ``.vtt`` files or subtitle streams.

Each caption segment (start, end, text) becomes a candidate clip around its time span, the way
VATT and MIL-NCE cut HowTo100M; the text loses its markup (``<i>``, ``{\\i1}``, line breaks).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import av

from harmonia.data.transcode import MediaRefused, container_format

MAX_SUBTITLE_BYTES = 16 << 20
_TIME = r"(?:(\d+):)?(\d{1,2}):(\d{2})[,.](\d{1,3})"
_CUE = re.compile(rf"^\s*{_TIME}\s*-->\s*{_TIME}")
_MARKUP = re.compile(r"<[^>]*>|\{[^}]*\}")


@dataclass(frozen=True)
class Segment:
    """One timed caption: seconds from the start of the video, and its plain text."""

    start: float
    end: float
    text: str


def plain_text(text: str) -> str:
    """Caption text without markup or line breaks."""
    text = _MARKUP.sub("", text.replace("\\N", " ").replace("\\n", " "))
    return " ".join(text.split())


def parse_cues(text: str) -> list[Segment]:
    """The cues of an SRT or WebVTT file (numbering, headers, NOTE/STYLE blocks are skipped)."""
    segments: list[Segment] = []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n").replace("\r", "\n")):
        lines = block.strip("\n").split("\n")
        for at, line in enumerate(lines):
            match = _CUE.match(line)
            if match:
                start, end = _seconds(match.groups()[:4]), _seconds(match.groups()[4:])
                segments.append(Segment(start, end, plain_text(" ".join(lines[at + 1 :]))))
                break
    return segments


def _seconds(parts: tuple[str | None, ...]) -> float:
    hours, minutes, seconds, fraction = parts
    whole = int(hours or 0) * 3600 + int(minutes or 0) * 60 + int(seconds or 0)
    return whole + int((fraction or "0").ljust(3, "0")) / 1000


def sidecar(media: Path) -> Path | None:
    """``name.srt`` or ``name.vtt`` beside ``name.mp4`` (the first that exists)."""
    for suffix in (".srt", ".vtt"):
        path = media.with_suffix(suffix)
        if path.is_file():
            return path
    return None


def read_sidecar(path: Path) -> list[Segment]:
    if path.stat().st_size > MAX_SUBTITLE_BYTES:
        raise MediaRefused(f"{path.name} is larger than {MAX_SUBTITLE_BYTES} bytes")
    try:
        return parse_cues(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise MediaRefused(f"{path.name} is not UTF-8 text") from None


def embedded(media: Path, stream: int = 0) -> list[Segment] | None:
    """The cues of the file's subtitle stream ``stream`` (mov_text, SRT, WebVTT, ASS), or None
    when it has none."""
    fmt = container_format(media)
    try:
        with av.open(str(media), mode="r", format=fmt) as container:
            streams = container.streams.subtitles
            if len(streams) <= stream:
                return None
            chosen = streams[stream]
            segments = []
            for packet in container.demux(chosen):
                if packet.pts is None or packet.time_base is None:
                    continue
                start = float(packet.pts * packet.time_base)
                end = start + float((packet.duration or 0) * packet.time_base)
                text = " ".join(_text(sub) for sub in packet.decode())
                segments.append(Segment(start, end, plain_text(text)))
            return segments
    except (av.error.FFmpegError, ValueError, OSError) as err:
        raise MediaRefused(f"subtitles not readable ({str(err)[:120]})") from None


def _text(sub: object) -> str:
    for name in ("dialogue", "text"):
        value = getattr(sub, name, None)
        if isinstance(value, bytes):
            return value.decode("utf-8", errors="replace")
        if isinstance(value, str):
            return value
    return ""

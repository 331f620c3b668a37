"""Where the source media come from: MNIST IDX images + FSDD recordings on disk, or the built-in set.

Layout of a source directory (what `harmonia data fetch` writes and what ../shared/data holds):
    DIR/mnist/<prefix>images-idx3-ubyte[.gz] and DIR/mnist/<prefix>labels-idx1-ubyte[.gz]
    DIR/fsdd/recordings/{digit}_{speaker}_{take}.wav
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import wave
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from harmonia.data.builtin import builtin_source
from harmonia.data.source_data import Recording, SourceData
from harmonia.errors import DataError

BUILTIN = "builtin"
ENV_DATA = "HARMONIA_DATA"
ENV_CACHE = "HARMONIA_CACHE"
FETCH_STAMP = "FETCHED.json"  # written by `harmonia data fetch` when a part is complete
FETCH_PARTS = ("mnist", "fsdd")
_RECORDING = re.compile(r"^(\d)_([A-Za-z0-9-]+)_(\d+)\.wav$")


def default_cache() -> Path:
    """Where `harmonia data fetch` puts the sources: $HARMONIA_CACHE or ~/.cache/harmonia/source."""
    env = os.environ.get(ENV_CACHE)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "harmonia" / "source"


def resolve_source(
    source: str | None, *, allow_builtin: bool = False, env: Mapping[str, str] | None = None
) -> SourceData:
    """Load the source named by `source`, else $HARMONIA_DATA, else the fetch cache, else built-in.

    The built-in set is used when asked for by name ("builtin") or, with allow_builtin, when no
    source exists anywhere. A source that is named but missing is an error, never a fallback.
    """
    env = os.environ if env is None else env
    if source == BUILTIN:
        return load_builtin()
    if source:
        return load_source_dir(Path(source).expanduser(), origin="--source")
    if env.get(ENV_DATA):
        return load_source_dir(Path(env[ENV_DATA]).expanduser(), origin=f"${ENV_DATA}")
    cache = Path(env[ENV_CACHE]).expanduser() if env.get(ENV_CACHE) else default_cache()
    if cache.is_dir():
        if not fetch_complete(cache):
            raise DataError(f"fetch cache {cache} is incomplete (run `harmonia data fetch` again)")
        return load_source_dir(cache, origin="the fetch cache")
    if allow_builtin:
        return load_builtin()
    raise DataError(
        f"no source data: --source not given, ${ENV_DATA} not set, fetch cache {cache} absent "
        "(run `harmonia data fetch`, pass --source DIR, or --source builtin)"
    )


def fetch_complete(root: Path) -> bool:
    """Whether `harmonia data fetch` finished every part in root."""
    try:
        stamp = json.loads((root / FETCH_STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(stamp, dict) and all(p in stamp.get("parts", {}) for p in FETCH_PARTS)


def load_source_dir(root: Path, origin: str = "--source") -> SourceData:
    """Read MNIST images/labels and list FSDD recordings under root (errors name what is missing)."""
    if not root.is_dir():
        raise DataError(f"source directory {root} (from {origin}) does not exist")
    images_path, labels_path = _find_mnist(root / "mnist")
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DataError(
            f"MNIST files disagree: {images_path.name} holds {images.shape}, {labels_path.name} holds {labels.shape}"
        )
    rec_dir = root / "fsdd" / "recordings"
    recordings = list_recordings(rec_dir)

    def load(rec: Recording) -> tuple[np.ndarray, int]:
        return read_wav(rec_dir / rec.name)

    return SourceData(
        kind="files",
        root=root,
        images=images,
        labels=labels.astype(np.int64),
        recordings=recordings,
        load_waveform=load,
        description={
            "kind": "files",
            "root": str(root),
            "mnist_images": images_path.name,
            "mnist_count": int(images.shape[0]),
            "recordings": len(recordings),
            "speakers": sorted({r.speaker for r in recordings}),
        },
    )


def _find_mnist(folder: Path) -> tuple[Path, Path]:
    pattern = "<prefix>images-idx3-ubyte[.gz] + <prefix>labels-idx1-ubyte[.gz]"
    if not folder.is_dir():
        raise DataError(f"MNIST folder {folder} not found (expected {pattern})")
    for images in sorted(folder.iterdir()):
        m = re.match(r"^(.*)images-idx3-ubyte(\.gz)?$", images.name)
        if not m:
            continue
        for ext in (m.group(2) or "", ".gz", ""):
            labels = folder / f"{m.group(1)}labels-idx1-ubyte{ext}"
            if labels.is_file():
                return images, labels
        raise DataError(f"MNIST labels for {images.name} not found in {folder}")
    raise DataError(f"MNIST images not found in {folder} (expected {pattern})")


IDX_MAX_BYTES = 1 << 28
"""Largest IDX payload read (256 MiB; all 70,000 MNIST images are 55 MB)."""


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzip) of unsigned bytes: images [N, R, C] or labels [N].

    Only the bytes the header declares are read (and decompressed), so a small gzip that
    inflates to gigabytes costs no more than its header says, within `IDX_MAX_BYTES`.
    """
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            head = fh.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] != 0x08:
                raise DataError(f"{path} is not an unsigned-byte IDX file")
            ndim = head[3]
            shape = fh.read(4 * ndim)
            dims = tuple(int.from_bytes(shape[4 * i : 4 * i + 4], "big") for i in range(ndim))
            count = math.prod(dims)
            if len(shape) < 4 * ndim or count > IDX_MAX_BYTES:
                raise DataError(f"{path}: IDX header declares {dims}, more than this reads")
            raw = fh.read(count)
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read {path}: {err}") from None
    if len(raw) < count:
        raise DataError(f"{path} is truncated ({len(raw)} of {count} data bytes)")
    return np.frombuffer(raw, dtype=np.uint8).reshape(dims).copy()


def list_recordings(folder: Path) -> list[Recording]:
    """FSDD recordings named {digit}_{speaker}_{take}.wav, sorted by name."""
    if not folder.is_dir():
        raise DataError(f"FSDD recordings folder {folder} not found")
    out = []
    for path in sorted(folder.iterdir()):
        m = _RECORDING.match(path.name)
        if m:
            out.append(Recording(int(m.group(1)), m.group(2), path.name))
    if not out:
        raise DataError(f"no recordings named {{digit}}_{{speaker}}_{{take}}.wav in {folder}")
    return out


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Mono float32 waveform in [-1, 1] and its sample rate (PCM 8/16/32-bit; channels averaged)."""
    try:
        with wave.open(str(path), "rb") as wav:
            width, channels, rate = wav.getsampwidth(), wav.getnchannels(), wav.getframerate()
            raw = wav.readframes(wav.getnframes())
    except (OSError, EOFError, wave.Error) as err:
        raise DataError(f"cannot read recording {path}: {err}") from None
    if width == 1:
        data = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        data = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 4:
        data = np.frombuffer(raw, dtype="<i4").astype(np.float32) / 2147483648.0
    else:
        raise DataError(f"recording {path} has unsupported sample width {width} bytes")
    if channels > 1:
        data = data[: data.size - data.size % channels].reshape(-1, channels).mean(axis=1)
    if data.size == 0:  # a clip would get silence while its labels say a digit is spoken
        raise DataError(f"recording {path} holds no samples")
    return data, rate


def load_builtin() -> SourceData:
    """The fallback source (scikit-learn's digits and synthesized tones)."""
    return builtin_source()

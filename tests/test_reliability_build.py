"""Building a dataset from odd or broken WAVs: handled or reported, never a half-written output.

The source directory is written here (MNIST as IDX files, a few recordings per speaker and
digit as WAVs) from the session's source data, so the test controls every byte. Handled: stereo,
44.1 kHz, 8-bit and 32-bit recordings — the clips equal (or closely follow) those built from the
plain 16-bit mono files. Reported: an empty recording, garbage bytes, 24-bit and float WAVs and a
directory named like a recording — ``harmonia data build`` exits 2 with one line naming the file
and leaves no output. A build killed halfway leaves no output either, and the next build removes
what the killed one left behind.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from faults import child_env, record
from harmonia.cli import main
from harmonia.data import BuildConfig, SourceData, build_dataset, read_index
from harmonia.data.audio import resample
from harmonia.data.plan import make_plans
from harmonia.data.samples import decode_members
from harmonia.data.shards import read_member
from harmonia.data.sources import load_source_dir
from harmonia.data.verify import verify_dataset

SIZES = {"train": 24, "val": 8, "test": 8}
CONFIG = BuildConfig(seed=0, sizes=SIZES, noise=0.0, shard_size=8)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_wav(path: Path, frames: np.ndarray, rate: int, width: int = 2) -> None:
    """``frames`` [N] or [N, C] floats in [-1, 1] as PCM of ``width`` bytes."""
    frames = frames[:, None] if frames.ndim == 1 else frames
    if width == 1:
        raw = np.clip(np.round(frames * 127 + 128), 0, 255).astype(np.uint8).tobytes()
    else:
        top = 2 ** (8 * width - 1) - 1
        ints = np.clip(np.round(frames * top), -top, top).astype(np.int64)
        raw = b"".join(int(v).to_bytes(width, "little", signed=True) for v in ints.reshape(-1))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(frames.shape[1])
        out.setsampwidth(width)
        out.setframerate(rate)
        out.writeframes(raw)


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory: pytest.TempPathFactory, data_source: SourceData) -> Path:
    """2 recordings per speaker and digit (16-bit mono) and 2000 MNIST images."""
    root = tmp_path_factory.mktemp("source")
    (root / "mnist").mkdir()
    write_idx(root / "mnist" / "t10k-images-idx3-ubyte", data_source.images[:2000])
    write_idx(root / "mnist" / "t10k-labels-idx1-ubyte", data_source.labels[:2000])
    recordings = root / "fsdd" / "recordings"
    recordings.mkdir(parents=True)
    taken: dict[tuple[int, str], int] = {}
    for rec in data_source.recordings:
        key = (rec.digit, rec.speaker)
        if taken.get(key, 0) < 2:
            taken[key] = taken.get(key, 0) + 1
            wave_, rate = data_source.load_waveform(rec)
            write_wav(recordings / rec.name, wave_, rate)
    return root


def used_recordings(source: Path) -> list[str]:
    """The recordings the build's plan uses, in a fixed order."""
    plans = make_plans(CONFIG, load_source_dir(source))
    return sorted({p.audio_file for p in plans})


def clip_audio(root: Path) -> dict[str, tuple[str, np.ndarray]]:
    """Each sample's recording name and decoded audio."""
    from harmonia.data import load_media_spec

    spec = load_media_spec(root)
    out = {}
    for r in read_index(root):
        with (root / r["shard"]).open("rb") as fh:
            members = {e: read_member(fh, m["offset"], m["size"]) for e, m in r["members"].items()}
        out[r["id"]] = (r["audio_file"], decode_members(r["id"], members, spec)["audio"].numpy())
    return out


def test_odd_wavs_are_handled(tmp_path: Path, source_dir: Path) -> None:
    odd = tmp_path / "odd"
    shutil.copytree(source_dir, odd)
    recordings = odd / "fsdd" / "recordings"
    victims = used_recordings(odd)[:4]
    conversions = {}
    for name, kind in zip(
        victims, ["stereo", "44.1 kHz", "8-bit", "32-bit stereo 22.05 kHz"], strict=True
    ):
        with wave.open(str(recordings / name)) as w:
            rate = w.getframerate()
        mono = np.frombuffer((recordings / name).read_bytes()[44:], "<i2") / 32767
        if kind == "stereo":
            write_wav(recordings / name, np.stack([mono, mono], 1), rate)
        elif kind == "44.1 kHz":
            write_wav(recordings / name, resample(mono, rate, 44100), 44100)
        elif kind == "8-bit":
            write_wav(recordings / name, mono, rate, width=1)
        else:
            up = resample(mono, rate, 22050)
            write_wav(recordings / name, np.stack([up, up], 1), 22050, width=4)
        conversions[name] = kind
    build_dataset(
        CONFIG, load_source_dir(source_dir), tmp_path / "plain", workers=2, progress=False
    )
    build_dataset(CONFIG, load_source_dir(odd), tmp_path / "built", workers=2, progress=False)
    assert verify_dataset(tmp_path / "built") == []
    plain, built = clip_audio(tmp_path / "plain"), clip_audio(tmp_path / "built")
    compared = 0
    for sample, (name, audio) in built.items():
        reference = plain[sample][1]
        if name not in conversions or conversions[name] == "stereo":
            assert np.array_equal(audio, reference), (sample, name)
        else:
            assert np.corrcoef(audio, reference)[0, 1] > 0.9, (sample, conversions[name])
            compared += 1
    assert compared >= 3
    record("odd_wavs_handled", kinds=len(conversions), clips=len(built))


def bad_recording(kind: str, path: Path) -> None:
    if kind == "zero-length":
        write_wav(path, np.zeros(0), 8000)
    elif kind == "garbage bytes":
        path.write_bytes(b"RIFF\x00\x00garbage" * 10)
    elif kind == "24-bit":
        write_wav(path, np.zeros(800), 8000, width=3)
    elif kind == "float":
        with wave.open(str(path)) as w:
            frames = w.getnframes()
        header = b"RIFF" + (36 + 4 * frames).to_bytes(4, "little") + b"WAVEfmt "
        fmt = (16).to_bytes(4, "little") + (3).to_bytes(2, "little") + (1).to_bytes(2, "little")
        fmt += (8000).to_bytes(4, "little") + (32000).to_bytes(4, "little")
        fmt += (4).to_bytes(2, "little") + (32).to_bytes(2, "little")
        data = b"data" + (4 * frames).to_bytes(4, "little") + np.zeros(frames, "<f4").tobytes()
        path.write_bytes(header + fmt + data)
    else:  # a directory where a recording should be
        path.unlink()
        path.mkdir()


def build_cli(source: Path, out: Path) -> tuple[int, str]:
    argv = ["data", "build", "--source", str(source), "--out", str(out), "--quiet"]
    sizes = [f"--{split}={n}" for split, n in SIZES.items()]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([*argv, *sizes, "--noise=0", "--shard-size=8", "--workers=2"])
    return code, err.getvalue()


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


@pytest.mark.parametrize("kind", ["zero-length", "garbage bytes", "24-bit", "float", "directory"])
def test_unreadable_wav_is_reported_and_nothing_is_written(
    tmp_path: Path, source_dir: Path, kind: str
) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(source_dir, bad)
    victim = bad / "fsdd" / "recordings" / used_recordings(bad)[-1]
    bad_recording(kind, victim)
    out = tmp_path / "out" / "dataset"
    code, err = build_cli(bad, out)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("harmonia: error: ") and str(victim) in lines[0], lines[0]
    assert not out.exists() and leftovers(out) == []


def test_a_killed_build_leaves_no_output(tmp_path: Path, source_dir: Path) -> None:
    out = tmp_path / "dataset"
    command = [
        sys.executable, "-m", "harmonia", "data", "build", "--source", str(source_dir),
        "--out", str(out), "--quiet", "--train=120", "--val=8", "--test=8", "--shard-size=4",
        "--workers=1",
    ]  # fmt: skip
    proc = subprocess.Popen(command, env=child_env(), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(
        len(list(p.glob("shards/*.tar"))) >= 2 for p in out.parent.glob(".dataset.tmp-*")
    ):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    assert len(leftovers(out)) == 1  # the killed build's hidden work directory
    code, err = build_cli(source_dir, out)
    assert code == 0, err
    assert verify_dataset(out) == [] and leftovers(out) == []  # cleaned up by the next build
    record("killed_build", leftovers_removed=1)


def test_a_live_build_beside_is_left_alone(tmp_path: Path, source_dir: Path) -> None:
    """Another build of the same output still running (its process alive) keeps its directory."""
    out = tmp_path / "dataset"
    busy = out.parent / f".{out.name}.tmp-{os.getppid()}"
    busy.mkdir(parents=True)
    code, err = build_cli(source_dir, out)
    assert code == 0, err
    assert busy.is_dir()

"""Hostile datasets (D2-D6, D14, D16) and two processes on one run directory (D9).

Every dataset here passes its own checksum (the index and summary are rewritten as a third
party could), so `harmonia data verify`'s hashes alone would not catch them.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import resource
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from dataset_edits import replace_members, rewrite_index
from harmonia.data import ShardDataset, StreamingDataset
from harmonia.data.index import read_index
from harmonia.data.media import CorruptMedia, decode_mp4
from harmonia.data.shards import read_member, write_shard
from harmonia.data.sources import read_idx
from harmonia.data.spec import MediaSpec
from harmonia.data.verify import verify_dataset
from harmonia.errors import DataError
from harmonia.training.data import split_captions
from harmonia.training.lock import RunInUse, run_lock


def _first_train_id(dataset: Path) -> str:
    return str(read_index(dataset, "train")[0]["id"])


# ---- D2: json members that Python's parser refuses in other ways than bad syntax


@pytest.mark.parametrize("payload", ["digits", "nesting"])
def test_unparsable_json_members_are_skipped_by_both_loaders(
    payload: str, tiny_dataset: Path, tmp_path: Path
) -> None:
    sample = _first_train_id(tiny_dataset)
    value = "9" * 5000 if payload == "digits" else "[" * 100_000 + "]" * 100_000
    member = f'{{"captions": ["a clip"], "id": "{sample}", "n": {value}}}'.encode()
    bad = replace_members(tiny_dataset, tmp_path / "bad", {sample: {"json": member}})
    assert verify_dataset(bad) == []
    mapped = ShardDataset(bad, "train")
    item = mapped[mapped.index_of(sample)]
    assert item["skipped"]["reason"].startswith("json member is not valid JSON")
    streamed = [i for i in StreamingDataset(bad, "train", shuffle=False) if "skipped" in i]
    assert [i["skipped"]["key"] for i in streamed] == [sample]
    assert len(split_captions(bad, "train")) == 4 * (len(mapped) - 1)  # the rest is read


# ---- D3: decompression bombs are refused from the headers, at the cost of a valid sample


def _clip(width: int, height: int, frames: int, *, fragmented: bool = False) -> bytes:
    """An H.264 + AAC mp4; fragmented = no frame count in the header (like a live recording)."""
    fps, rate = 4, 8000
    buf = io.BytesIO()
    options = {"movflags": "frag_keyframe+empty_moov"} if fragmented else {}
    with av.open(buf, "w", format="mp4", options=options) as out:
        video = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "51"})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = out.add_stream("aac", rate=rate)
        audio.layout = "mono"
        black = np.zeros((height, width, 3), np.uint8)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(black, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        samples = np.zeros((1, rate * frames // fps), np.float32)
        sound = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
        sound.sample_rate, sound.pts, sound.time_base = rate, 0, Fraction(1, rate)
        out.mux(audio.encode(sound))
        out.mux(audio.encode(None))
    return buf.getvalue()


_COST = """
import json, resource, sys, time
from harmonia.data.media import CorruptMedia, decode_mp4
from harmonia.data.spec import MediaSpec
from harmonia.data.spec import MediaSpec
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
try:
    decode_mp4(data, MediaSpec())
    outcome = "ok"
except CorruptMedia as err:
    outcome = str(err)
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps([outcome, time.perf_counter() - started, grown]))
"""


def _decode_cost(path: Path) -> tuple[str, float, int]:
    """(outcome, seconds, peak RSS growth in KiB) of decoding ``path`` in a fresh process."""
    done = subprocess.run([sys.executable, "-c", _COST, str(path)], capture_output=True, text=True)
    outcome, seconds, grown = json.loads(done.stdout)
    return str(outcome), float(seconds), int(grown)


@pytest.mark.parametrize(
    ("width", "height", "frames", "fragmented", "reason"),
    [
        (4096, 2160, 40, False, "video is 2160x4096, expected 32x32"),
        (32, 32, 800, False, "video has 800 frames, expected 8"),
        (32, 32, 800, True, "video has more than 8 frames"),  # no count in the header
        (4096, 2160, 40, True, "video is 2160x4096, expected 32x32"),
    ],
)
def test_a_decompression_bomb_costs_no_more_than_a_valid_clip(
    width: int, height: int, frames: int, fragmented: bool, reason: str, tmp_path: Path
) -> None:
    bomb, valid = tmp_path / "bomb.mp4", tmp_path / "valid.mp4"
    bomb.write_bytes(_clip(width, height, frames, fragmented=fragmented))
    valid.write_bytes(_clip(32, 32, 8))
    assert bomb.stat().st_size < 300_000
    outcome, seconds, grown = _decode_cost(bomb)
    valid_outcome, valid_seconds, valid_grown = _decode_cost(valid)
    assert (outcome, valid_outcome) == (reason, "ok")
    assert grown <= valid_grown + 20_000  # KiB: at most about what a valid sample costs
    assert seconds < max(1.0, 10 * valid_seconds)


# ---- D4: an "mp4" that is an ffconcat list pulling in another local file


def test_an_ffconcat_list_is_not_opened_as_media(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "holiday.mp4").write_bytes(_clip(32, 32, 8))
    monkeypatch.chdir(tmp_path)  # relative names in the list resolve from the working dir
    listing = b"ffconcat version 1.0\nfile private/holiday.mp4\n"
    with pytest.raises(CorruptMedia, match="not a readable mp4"):
        decode_mp4(listing, MediaSpec())


# ---- D5 / D6: shard names, offsets and sizes from the index and summary


def test_pipe_and_absolute_shard_names_are_never_run_or_followed(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    pwned = tmp_path / "PWNED"
    out = tmp_path / "pipe"
    shutil.copytree(tiny_dataset, out)
    summary = json.loads((out / "summary.json").read_text())
    first = summary["splits"]["train"]["shards"][0]
    summary["splits"]["train"]["shards"][0] = f"pipe:touch {pwned} && cat {first}"
    (out / "summary.json").write_text(json.dumps(summary))
    assert any("shard list of split 'train' does not match" in p for p in verify_dataset(out))
    with pytest.raises(DataError, match="does not match"):
        StreamingDataset(out, "train")
    assert not pwned.exists()

    def absolute(records: list[dict[str, Any]]) -> None:
        for r in records:
            if r["shard"] == first:
                r["shard"] = str((tiny_dataset / first).resolve())

    outside = rewrite_index(tiny_dataset, tmp_path / "abs", absolute)
    sample = next(r["id"] for r in read_index(outside, "train") if r["shard"].startswith("/"))
    data = ShardDataset(outside, "train")
    assert "outside the dataset" in data[data.index_of(sample)]["skipped"]["reason"]
    assert any("outside the dataset" in p for p in verify_dataset(outside))


def test_a_fifo_or_device_as_shard_is_refused_without_hanging(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    first, second = read_index(tiny_dataset, "train")[:2]

    def special(records: list[dict[str, Any]]) -> None:
        records[0]["shard"] = "shards/fifo.tar"
        records[1]["shard"] = "shards/zero.tar"
        records[1]["members"]["json"]["size"] = 8_000_000_000

    fifo = rewrite_index(tiny_dataset, tmp_path / "fifo", special)
    os.mkfifo(fifo / "shards" / "fifo.tar")
    os.symlink("/dev/zero", fifo / "shards" / "zero.tar")
    data = ShardDataset(fifo, "train")
    for sample in (first, second):
        assert "not a regular file" in data[data.index_of(sample["id"])]["skipped"]["reason"]
    assert sum("not a regular file" in p for p in verify_dataset(fifo)) == 2
    assert split_captions(fifo, "train")  # the other samples' captions are still read


def test_member_ranges_beyond_the_shard_cost_nothing(tiny_dataset: Path, tmp_path: Path) -> None:
    def huge(records: list[dict[str, Any]]) -> None:
        records[0]["members"]["json"]["size"] = 1 << 40
        records[1]["members"]["mp4"]["offset"] = 1 << 40

    lying = rewrite_index(tiny_dataset, tmp_path / "huge", huge)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    problems = verify_dataset(lying)
    assert sum("outside the shard" in p for p in problems) == 2
    data = ShardDataset(lying, "train")
    assert "outside the shard" in data[0]["skipped"]["reason"]
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("[1, 2, 3]", "not a JSON object"),
        ('{"id": "x", "split": "train", "members": {}}', "'shard' must be a non-empty string"),
        (None, "'offset' and 'size' must be non-negative integers"),
        ("negative", "'offset' and 'size' must be non-negative integers"),
        ("[" * 100_000 + "]" * 100_000, "is not valid JSON"),
    ],
)
def test_malformed_index_lines_are_one_line_errors(
    line: str | None, problem: str, tiny_dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bad"
    shutil.copytree(tiny_dataset, out)
    lines = (out / "index.jsonl").read_text().splitlines()
    if line in (None, "negative"):
        record = json.loads(lines[2])
        member = record["members"]["json"]
        if line is None:
            member["size"] = str(member["size"])
        else:
            member["offset"] = -5
        line = json.dumps(record)
    lines[2] = line
    (out / "index.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=problem.replace("(", r"\(")):
        read_index(out)
    done = subprocess.run(
        [sys.executable, "-m", "harmonia", "data", "verify", str(out)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert problem in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("edit", ["no media", "splits a list", "no bytes"])
def test_a_mangled_summary_is_one_line_in_data_info(
    edit: str, tiny_dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bad"
    shutil.copytree(tiny_dataset, out)
    summary = json.loads((out / "summary.json").read_text())
    if edit == "no media":
        del summary["media"]
    elif edit == "splits a list":
        summary["splits"] = list(summary["splits"])
    else:
        del summary["bytes"]
    (out / "summary.json").write_text(json.dumps(summary))
    done = subprocess.run(
        [sys.executable, "-m", "harmonia", "data", "info", str(out)], capture_output=True, text=True
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


# ---- D16: duplicate samples


def test_duplicate_ids_in_the_index_are_refused(tiny_dataset: Path, tmp_path: Path) -> None:
    def duplicate(records: list[dict[str, Any]]) -> None:
        records.append(dict(records[0]))

    twice = rewrite_index(tiny_dataset, tmp_path / "twice", duplicate)
    with pytest.raises(DataError, match="appears twice"):
        ShardDataset(twice, "train")


def test_a_key_repeated_later_in_a_shard_is_streamed_once(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "repeat"
    shutil.copytree(tiny_dataset, out)
    records = read_index(out, "train")
    shard = records[0]["shard"]
    same = [r for r in records if r["shard"] == shard]
    samples = []
    with (tiny_dataset / shard).open("rb") as fh:
        for r in [*same, same[0]]:  # the first sample again at the end of its shard
            members = {e: read_member(fh, m["offset"], m["size"]) for e, m in r["members"].items()}
            samples.append((r["id"], sorted(members.items())))
    write_shard(out / shard, samples)
    items = list(StreamingDataset(out, "train", shuffle=False))
    ids = [i["id"] for i in items if "id" in i]
    assert len(ids) == len(set(ids)) == len(records)
    assert [i["skipped"]["reason"] for i in items if "skipped" in i] == [
        "duplicate key in the shards"
    ]


# ---- D14: sources that inflate


def test_an_idx_gzip_bomb_reads_only_what_its_header_declares(tmp_path: Path) -> None:
    bomb = tmp_path / "images-idx3-ubyte.gz"
    header = bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    with gzip.open(bomb, "wb", compresslevel=6) as fh:
        fh.write(header)
        for _ in range(16):  # 256 MiB of zeros after the 7,840 declared bytes
            fh.write(bytes(1 << 24))
    assert bomb.stat().st_size < 1_000_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert read_idx(bomb).shape == (10, 28, 28)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB
    huge = tmp_path / "huge-idx3-ubyte"
    huge.write_bytes(
        bytes([0, 0, 8, 3]) + (1 << 31).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    )
    with pytest.raises(DataError, match="more than this reads"):
        read_idx(huge)


def test_a_download_larger_than_its_pinned_file_is_stopped(tmp_path: Path) -> None:
    from harmonia.data.fetch import RemoteFile, download

    endless = tmp_path / "endless"
    endless.write_bytes(bytes(3 << 20))
    item = RemoteFile(endless.as_uri(), "mnist/x.gz", "0" * 64, max_bytes=1 << 20)
    with pytest.raises(DataError, match="larger than 1048576 bytes"):
        download(item, tmp_path / "cache")
    assert list((tmp_path / "cache").rglob("*")) == [tmp_path / "cache" / "mnist"]


# ---- D9: one process per run directory


def test_a_second_process_on_a_run_directory_is_refused_and_a_stale_lock_taken_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
         "from harmonia.training.lock import run_lock\n"
         "with run_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)",
         str(run)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with (
            pytest.raises(RunInUse, match=rf"is in use by process {holder.pid} on "),
            run_lock(run),
        ):
            pass
    finally:
        holder.kill()  # dies holding the lock, as a killed job would
        holder.wait()
    with run_lock(run):
        pass
    assert f"taking over the lock of process {holder.pid}" in capsys.readouterr().out
    with run_lock(run):  # released cleanly: nothing to take over
        pass
    assert capsys.readouterr().out == ""


def test_two_trainings_into_one_run_directory_one_is_refused(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    command = [
        sys.executable, "-m", "harmonia", "train", "demo", "--out", str(run), "--data",
        str(tiny_dataset), "--no-progress", "data.batch_size=8", "train.steps=30",
        "train.checkpoint_every=5",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    try:
        while not (run / ".lock").is_file() or not (run / ".lock").read_text():
            assert first.poll() is None, first.communicate()
        second = subprocess.run([*command, "--resume"], capture_output=True, text=True, env=env)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert f"is in use by process {first.pid}" in second.stderr
        _, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines][-1] == 30

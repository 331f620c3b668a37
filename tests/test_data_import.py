"""`harmonia data import`: a user's own videos and captions become a dataset the trainer reads.

Media are made here with PyAV in several containers, codecs, sizes, rates and audio layouts; each
second of a test video has its own colour and pitch, so a test can tell where a clip was cut.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import torch

from harmonia.cli import main
from harmonia.data import ShardDataset, collate, load_summary, read_index
from harmonia.data.import_inputs import (
    expand_braces,
    shard_candidates,
    subtitle_candidates,
    table_candidates,
)
from harmonia.data.importer import ImportOptions, import_dataset
from harmonia.data.spec import MediaSpec
from harmonia.data.subtitles import Segment, parse_cues
from harmonia.data.transcode import MediaRefused, cut_clip
from harmonia.errors import DataError
from user_media import COLOURS, write_video

SPEC = MediaSpec()  # the shipped models' clip: 8 frames of 32x32 at 4 fps, 8 kHz


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One file per container/codec family, plus a silent one and a broken one."""
    root = tmp_path_factory.mktemp("media")
    write_video(root / "h264.mp4", size=(320, 180))
    write_video(
        root / "vp9.webm",
        container="webm",
        codec="libvpx-vp9",
        audio_codec="libopus",
        rate=48000,
        size=(256, 144),
    )
    write_video(
        root / "hevc_vfr.mkv",
        container="matroska",
        codec="libx265",
        audio_codec="flac",
        rate=22050,
        layout="mono",
        size=(200, 300),
        fps=30000 / 1001,
        variable_rate=True,
    )
    write_video(
        root / "hevc10_60fps.mkv",
        container="matroska",
        codec="libx265",
        pix_fmt="yuv420p10le",
        rate=48000,
        fps=60,
        size=(256, 144),
    )
    write_video(root / "av1.mp4", codec="libsvtav1", size=(256, 144), fps=24)
    write_video(root / "silent.mp4", audio_codec=None, size=(160, 160))
    write_video(root / "mpeg4.avi", container="avi", codec="mpeg4", audio_codec="mp3", rate=16000)
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(300))
    (root / "playlist.mp4").write_bytes(b"ffconcat version 1.0\nfile '/etc/hostname'\n")
    return root


def write_table(path: Path, rows: list[dict[str, Any]]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return path
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def dominant_hz(audio: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
    return float(np.fft.rfftfreq(audio.size, 1 / rate)[spectrum.argmax()])


def colour_of(frame: np.ndarray) -> int:
    """Which of COLOURS a (compressed) frame shows."""
    mean = frame.reshape(-1, 3).mean(0)
    return int(np.abs(COLOURS.astype(float) - mean).sum(1).argmin())


# ---------------------------------------------------------------------- cutting one clip
@pytest.mark.parametrize(
    "name", ["h264.mp4", "vp9.webm", "hevc_vfr.mkv", "hevc10_60fps.mkv", "av1.mp4", "mpeg4.avi"]
)
def test_a_clip_is_cut_at_its_start_in_the_spec_shape(media: Path, name: str) -> None:
    clip = cut_clip(media / name, SPEC, start=1.1)
    assert clip.video.shape == (SPEC.frames, SPEC.height, SPEC.width, 3)
    # frames at 1.1, 1.35, ..., 2.85 s: four of second 1, four of second 2 (off the boundaries,
    # which the variable-rate file's jittered timestamps blur)
    assert [colour_of(f) for f in clip.video] == [1] * 4 + [2] * 4
    assert clip.audio is not None and clip.audio.shape == (SPEC.audio_samples,)
    half = SPEC.audio_samples // 2  # the tone is 300 Hz in second 1 and 400 Hz in second 2
    assert dominant_hz(clip.audio[200 : half - 200], SPEC.sample_rate) == pytest.approx(300, abs=8)
    assert dominant_hz(clip.audio[half + 200 : -200], SPEC.sample_rate) == pytest.approx(400, abs=8)


def test_crop_fills_the_frame_and_pad_keeps_all_of_it(media: Path) -> None:
    tall = cut_clip(media / "hevc_vfr.mkv", SPEC, fit="crop").video[0]
    assert tall.reshape(-1, 3).min(0).min() > 10  # no black bars
    padded = cut_clip(media / "hevc_vfr.mkv", SPEC, fit="pad").video[0]  # 200x300 -> 21x32
    assert padded[:, :4].max() == 0 and padded[:, -4:].max() == 0
    assert padded[:, 14:18].min() > 10


def test_a_span_past_the_end_holds_the_last_frame_and_a_file_without_sound_has_no_audio(
    media: Path,
) -> None:
    clip = cut_clip(media / "silent.mp4", SPEC, start=3.0)  # the file is 4 s long
    assert clip.audio is None
    assert [colour_of(f) for f in clip.video] == [3] * SPEC.frames
    with pytest.raises(MediaRefused, match="no video frame"):
        cut_clip(media / "h264.mp4", SPEC, start=60.0)


def test_what_is_not_a_video_is_refused_without_being_opened_as_something_else(
    media: Path, tmp_path: Path
) -> None:
    with pytest.raises(MediaRefused, match="not an mp4/mov, mkv/webm or avi"):
        cut_clip(media / "playlist.mp4", SPEC)  # an ffconcat list: never probed, never followed
    with pytest.raises(MediaRefused, match="not readable as mp4"):
        cut_clip(media / "broken.mp4", SPEC)
    with pytest.raises(MediaRefused, match="no video stream 1"):
        cut_clip(media / "h264.mp4", SPEC, video_stream=1)


# ---------------------------------------------------------------------- a folder + a table
@pytest.fixture(scope="module")
def imported(media: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("imported")
    table = write_table(
        root / "captions.csv",
        [
            {"path": "h264.mp4", "caption": "red then green", "start": "0", "channel": "a"},
            {"path": "h264.mp4", "caption": "a second caption", "start": "0"},
            {"path": "h264.mp4", "caption": "late", "start": "2", "end": "3.5", "key": "late"},
            {"path": "vp9.webm", "captions": '["webm one", "webm two"]'},
            {"path": "hevc_vfr.mkv", "caption": "hevc"},
            {"path": "silent.mp4", "caption": "no sound here"},
            {"path": "mpeg4.avi", "caption": "avi"},
            {"path": "broken.mp4", "caption": "broken"},
            {"path": "playlist.mp4", "caption": "a playlist"},
            {"path": "../outside.mp4", "caption": "escape"},
            {"path": "h264.mp4", "caption": "  ", "start": "1"},
            {"path": "h264.mp4", "caption": "zero", "start": "2", "end": "2"},
            {"path": "nothere.mp4", "caption": "missing"},
            {"path": "h264.mp4", "caption": "same key, other span", "start": "1", "key": "late"},
        ],
    )
    out = root / "dataset"
    options = ImportOptions(val_fraction=0.0, test_fraction=0.0)
    summary = import_dataset(
        table_candidates(media, table), out, options, workers=2, progress=False
    )
    return out, summary


def test_every_file_pytorch_can_decode_is_imported_and_the_rest_is_named(
    imported: tuple[Path, dict[str, Any]],
) -> None:
    out, summary = imported
    assert summary["samples"] == 6 and summary["labels"] is False
    assert summary["splits"]["train"]["without_audio"] == 1
    reasons = sorted(item["reason"].split(" (")[0] for item in summary["import"]["skipped_items"])
    assert reasons == [
        "duplicate key 'late' for another file or span",
        "no non-empty caption",
        "no such file",
        "not an mp4/mov, mkv/webm or avi file",
        "not readable as mp4",
        "the path leaves the folder",
        "zero-length or reversed span",
    ]
    assert load_summary(out)["checksum"] == summary["checksum"]
    assert main(["data", "verify", str(out)]) == 0


def test_imported_clips_decode_with_captions_metadata_and_masked_missing_audio(
    imported: tuple[Path, dict[str, Any]],
) -> None:
    out, _ = imported
    records = {r["id"]: r for r in read_index(out)}
    first = records["h264_mp4"]
    assert first["file"] == "h264.mp4" and first["metadata"] == {"channel": "a"}
    assert records["late"]["caption_span"] == [2.0, 3.5]
    assert (records["late"]["start"], records["late"]["end"]) == (1.75, 3.75)
    assert "digit" not in first and "misaligned_text" not in first
    dataset = ShardDataset(out, "train")
    samples = {s["id"]: s for s in (dataset[i] for i in range(len(dataset)))}
    assert samples["h264_mp4"]["text"] == ["red then green", "a second caption"]
    assert samples["vp9_webm"]["text"] == ["webm one", "webm two"]
    assert [colour_of(f.numpy()) for f in samples["h264_mp4"]["video"]] == [0] * 4 + [1] * 4
    assert not samples["silent_mp4"]["audio"].any()
    assert samples["h264_mp4"]["audio"].abs().max() > 0.1
    batch = collate([samples["silent_mp4"], samples["h264_mp4"]])
    assert batch["audio"].ne(0).any(dim=1).tolist() == [False, True]  # VATT's audio validity


def test_the_same_input_gives_the_same_dataset_and_splits_are_stable(
    media: Path, tmp_path: Path
) -> None:
    rows = [{"path": "h264.mp4", "caption": f"clip {s}", "start": str(s)} for s in range(3)]
    rows += [{"path": "silent.mp4", "caption": "silent"}]
    table = write_table(tmp_path / "captions.jsonl", rows)
    options = ImportOptions(val_fraction=0.3, test_fraction=0.3, seed=5)
    one = import_dataset(table_candidates(media, table), tmp_path / "a", options, progress=False)
    two = import_dataset(table_candidates(media, table), tmp_path / "b", options, progress=False)
    assert one["checksum"] == two["checksum"]
    assert (tmp_path / "a" / "index.jsonl").read_bytes() == (
        tmp_path / "b" / "index.jsonl"
    ).read_bytes()
    more = write_table(tmp_path / "more.jsonl", [*rows, {"path": "vp9.webm", "caption": "new"}])
    three = import_dataset(table_candidates(media, more), tmp_path / "c", options, progress=False)
    splits = {r["id"]: r["split"] for r in read_index(tmp_path / "a")}
    grown = {r["id"]: r["split"] for r in read_index(tmp_path / "c")}
    assert three["samples"] == one["samples"] + 1
    assert all(grown[k] == v for k, v in splits.items())


def test_a_failed_import_leaves_nothing_and_a_non_dataset_is_never_overwritten(
    media: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = write_table(tmp_path / "t.csv", [{"path": "h264.mp4", "caption": "x"}])
    from harmonia.data import importer

    def explode(*args: Any, **kwargs: Any) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(importer, "write_shard", explode)
    with pytest.raises(DataError, match=r"No space left on device.*nothing was written"):
        import_dataset(table_candidates(media, table), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]
    monkeypatch.undo()
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not empty and not an AV-MNIST-T dataset"):
        import_dataset(table_candidates(media, table), precious, overwrite=True, progress=False)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_a_symlink_out_of_the_folder_and_bad_tables_are_refused(
    media: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    os.symlink(media / "h264.mp4", folder / "link.mp4")
    os.symlink(folder / "loop.mp4", folder / "loop.mp4")
    rows = [{"path": name, "caption": "x"} for name in ("link.mp4", "loop.mp4", "nul\0.mp4")]
    table = write_table(tmp_path / "t.jsonl", rows)
    reasons = [r.reason for r in table_candidates(folder, table)]  # a loop, a NUL: no crash
    assert reasons == ["the path leaves the folder (refused, not followed)"] * 3
    latin = tmp_path / "latin.csv"
    latin.write_bytes("path,caption\nh264.mp4,caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        list(table_candidates(media, latin))
    nopath = write_table(tmp_path / "nopath.csv", [{"file": "h264.mp4", "caption": "x"}])
    with pytest.raises(DataError, match="no 'path' column"):
        list(table_candidates(media, nopath))
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text('[1, 2]\n{"path": "h264.mp4", "caption": 7}\n', encoding="utf-8")
    assert [r.reason for r in table_candidates(media, jsonl)] == [
        "not a JSON object",
        "a caption is not a string (int)",
    ]


# ---------------------------------------------------------------------- timed captions
SRT = """1
00:00:00,500 --> 00:00:01,500
first <i>thing</i>

2
00:00:01,600 --> 00:00:02,900
second thing

3
00:00:03,000 --> 00:00:03,000
no duration
"""
VTT = """WEBVTT

NOTE a comment that is not a cue

intro
00:00.200 --> 00:01.000 align:start position:10%
hello {\\i1}there{\\i0}

00:00:01.000 --> 00:00:02.500
two
lines
"""


def test_srt_and_webvtt_cues_are_read_without_markup() -> None:
    assert parse_cues(SRT) == [
        Segment(0.5, 1.5, "first thing"),
        Segment(1.6, 2.9, "second thing"),
        Segment(3.0, 3.0, "no duration"),
    ]
    assert parse_cues(VTT.replace("\\n", "\\r\\n")) == [
        Segment(0.2, 1.0, "hello there"),
        Segment(1.0, 2.5, "two lines"),
    ]


def embed_srt(video: Path, srt: Path, out: Path) -> Path:
    """``video``'s frames with ``srt`` as a subtitle stream, in mkv (remuxed, not re-encoded)."""
    with (
        av.open(str(video)) as source,
        av.open(str(srt), format="srt") as cues,
        av.open(str(out), "w", format="matroska") as sink,
    ):
        frames, text = source.streams.video[0], cues.streams.subtitles[0]
        pairs = [(frames, sink.add_stream_from_template(frames))]
        pairs.append((text, sink.add_stream_from_template(text)))
        for container, (stream, target) in zip((source, cues), pairs, strict=True):
            for packet in container.demux(stream):
                if packet.dts is None:
                    continue
                packet.stream = target
                sink.mux(packet)
    return out


def test_every_timed_caption_becomes_a_clip_with_its_neighbours_as_candidates(
    media: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "talks"
    folder.mkdir()
    (folder / "talk.mp4").write_bytes((media / "h264.mp4").read_bytes())
    (folder / "talk.srt").write_text(SRT, encoding="utf-8")
    (tmp_path / "cues.srt").write_text(SRT, encoding="utf-8")
    embed_srt(media / "h264.mp4", tmp_path / "cues.srt", folder / "inside.mkv")
    (folder / "plain.mp4").write_bytes((media / "silent.mp4").read_bytes())
    found = list(subtitle_candidates(folder, neighbours=1))
    refusals = sorted((r.source, r.reason.split(" (")[0]) for r in found if hasattr(r, "reason"))
    assert refusals == [
        ("inside.mkv#2", "zero-length or reversed span"),
        ("plain.mp4", "no timed captions"),
        ("talk.mp4#2", "zero-length or reversed span"),
    ]
    clips = {c.key: c for c in found if not hasattr(c, "reason")}
    assert sorted(clips) == [
        "inside_mkv_00000",
        "inside_mkv_00001",
        "talk_mp4_00000",
        "talk_mp4_00001",
    ]
    assert clips["talk_mp4_00000"].captions == ("first thing", "second thing")
    assert clips["talk_mp4_00001"].captions == ("second thing", "first thing", "no duration")
    inside = clips["inside_mkv_00001"]
    assert (inside.start, inside.end) == pytest.approx((1.6, 2.9))
    assert clips["inside_mkv_00000"].metadata == {"segment": 0, "caption_source": "stream"}
    summary = import_dataset(iter(found), tmp_path / "out", folder=folder, progress=False)
    assert summary["samples"] == 4 and summary["import"]["skipped"] == 3
    assert summary["import"]["folder"] == str(folder.resolve())
    by_id = {r["id"]: r for r in read_index(tmp_path / "out")}
    assert by_id["talk_mp4_00001"]["caption_span"] == [1.6, 2.9]
    assert by_id["talk_mp4_00001"]["file"] == "talk.mp4"  # the file; the segment is metadata
    assert by_id["talk_mp4_00001"]["metadata"]["segment"] == 1
    assert by_id["talk_mp4_00001"]["start"] == pytest.approx(1.25)  # centred on the caption


# ---------------------------------------------------------------------- video2dataset shards
def write_v2d_shard(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_video2dataset_shards_are_imported_with_txt_and_json_captions(
    media: Path, tmp_path: Path
) -> None:
    video = (media / "h264.mp4").read_bytes()
    meta = {"caption": "from the json", "url": "https://example.org/v", "status": "success"}
    write_v2d_shard(
        tmp_path / "00000.tar",
        {
            "000000000.mp4": video,
            "000000000.txt": b"from the txt",
            "000000000.json": json.dumps(meta).encode(),
            "000000001.mp4": (media / "silent.mp4").read_bytes(),
            "000000001.txt": b"silent",
            "000000002.txt": b"a caption without a video",
        },
    )
    write_v2d_shard(tmp_path / "00001.tar", {"000000003.mp4": video, "000000003.txt": b"\xff\xfe"})
    assert expand_braces(str(tmp_path / "{00000..00001}.tar")) == [
        str(tmp_path / "00000.tar"),
        str(tmp_path / "00001.tar"),
    ]
    pattern = [str(tmp_path / "{00000..00002}.tar")]
    summary = import_dataset(
        shard_candidates(pattern),
        tmp_path / "out",
        ImportOptions(val_fraction=0.0, test_fraction=0.0),
        progress=False,
    )
    assert summary["samples"] == 2
    assert sorted(i["reason"] for i in summary["import"]["skipped_items"]) == [
        "captions are not UTF-8 text / valid JSON",
        "no such shard",
        "no video member",
    ]
    records = {r["id"]: r for r in read_index(tmp_path / "out")}
    assert records["000000000"]["metadata"] == {"url": "https://example.org/v", "status": "success"}
    assert records["000000001"]["has_audio"] is False
    sample = ShardDataset(tmp_path / "out", "train")[0]
    assert sample["text"] == ["from the txt", "from the json"]


# ---------------------------------------------------------------------- the command, then training
def test_import_then_train_on_the_imported_clips(
    media: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [
        {"path": name, "caption": f"{name} second {s}", "start": str(s)}
        for name in ("h264.mp4", "vp9.webm", "silent.mp4", "mpeg4.avi")
        for s in range(3)
    ]
    table = write_table(tmp_path / "captions.csv", rows)
    out = tmp_path / "data"
    args = ["data", "import", str(media), "--captions", str(table), "--out", str(out)]
    assert main([*args, "--workers", "1", "--quiet", "--val-fraction", "0.25"]) == 0
    printed = capsys.readouterr().out
    assert "imported: 12 clips" in printed and "without audio" in printed
    assert main([*args, "--quiet"]) == 2  # exists: refused
    assert "already exists" in capsys.readouterr().err
    run = tmp_path / "run"
    overrides = ["train.steps=3", "data.batch_size=4", "train.eval_every=0", "eval.batch_size=4"]
    overrides += ["train.progress=false", "data.num_workers=0", "train.log_every=1"]
    code = main(["train", "demo", "--data", str(out), "--out", str(run), *overrides])
    assert code == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["skipped_samples"] == 0
    assert torch.isfinite(torch.tensor(summary["final_metrics"]["loss/total"]))

    # evaluate and audit without labels, then drop the most suspected quarter and train again
    assert main(["eval", str(run), "--split", "val"]) == 0
    evaluated = json.loads((run / "eval.json").read_text())
    assert "zero_shot/digit" in evaluated["skipped_metrics"]
    assert main(["audit", str(run)]) == 0
    page = (run / "audit.html").read_text()
    # the most suspect clip links to its source file, played at the clip's span
    assert load_summary(out)["import"]["folder"] == str(media.resolve())
    ledger_ids = [line.split(",")[0] for line in (run / "ledger.csv").read_text().splitlines()[1:]]
    record = next(r for r in read_index(out) if r["id"] == ledger_ids[0])
    assert record["end"] == record["start"] + SPEC.seconds
    href = f"{(media / record['file']).resolve().as_uri()}#t={record['start']:g},{record['end']:g}"
    link = f'<a href="{href}" target="_blank" rel="noopener noreferrer"><bdi>{record["file"]}</bdi>'
    suspects = page.split('id="suspects"')[1]
    assert link in suspects.split("<tbody><tr>")[1].split("</tr>")[0]  # in the first row
    assert suspects.count('<a href="file:') == len(ledger_ids)  # every suspect shown
    clean = tmp_path / "clean"
    assert main(["data", "filter", str(run), "--out", str(clean), "--drop-fraction", "0.25"]) == 0
    train_ids = {r["id"] for r in read_index(out, "train")}
    kept = {r["id"] for r in read_index(clean, "train")}
    with (clean / "dropped.csv").open(newline="") as fh:
        dropped = [row["id"] for row in csv.DictReader(fh)]
    assert len(dropped) == round(0.25 * len(train_ids)) > 0
    assert kept == train_ids - set(dropped)
    assert dropped == [i for i in ledger_ids if i in train_ids][: len(dropped)]  # most suspected
    assert {r["id"] for r in read_index(clean, "val")} == {r["id"] for r in read_index(out, "val")}
    assert main(["data", "verify", str(clean)]) == 0
    again = tmp_path / "again"
    assert main(["train", "demo", "--data", str(clean), "--out", str(again), *overrides]) == 0


def test_the_command_needs_a_folder_with_a_table_or_shards(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "import", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert (
        "give FOLDER with --captions TABLE or --subtitles, or --shards" in capsys.readouterr().err
    )


def test_filter_needs_one_rule_and_a_ledger_that_knows_the_data(tmp_path: Path) -> None:
    from harmonia.data.filtering import FilterRule

    with pytest.raises(DataError, match="exactly one of"):
        FilterRule(top=3, below=0.0).validate()
    with pytest.raises(DataError, match="must be in"):
        FilterRule(fraction=1.5).validate()

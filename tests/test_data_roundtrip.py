"""Build a small dataset from the real sources and decode every sample back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harmonia.data import (
    BuildConfig,
    ShardDataset,
    SourceData,
    digits_in_caption,
    load_labels,
    load_media_spec,
    load_summary,
    motions_in_caption,
    read_index,
)
from harmonia.data.audio import normalize_peak, place, resample
from harmonia.data.plan import make_plans


@pytest.fixture(scope="module")
def decoded(tiny_dataset: Path) -> dict[str, dict]:
    """Every sample of every split, decoded through the map-style dataset."""
    out = {}
    for split in ("train", "val", "test"):
        ds = ShardDataset(tiny_dataset, split)
        for i in range(len(ds)):
            item = ds[i]
            assert "skipped" not in item, item
            out[item["id"]] = item
    return out


def test_every_sample_decodes_with_the_spec_shape(tiny_dataset: Path, decoded: dict) -> None:
    spec = load_media_spec(tiny_dataset)
    records = read_index(tiny_dataset)
    assert len(decoded) == len(records) == 80
    for item in decoded.values():
        assert tuple(item["video"].shape) == (spec.frames, spec.height, spec.width, 3)
        assert str(item["video"].dtype) == "torch.uint8"
        assert tuple(item["audio"].shape) == (spec.audio_samples,)
        assert str(item["audio"].dtype) == "torch.float32"
        assert float(item["audio"].abs().max()) <= 1.0
        assert len(item["text"]) == spec.captions_per_clip
        assert len(set(item["text"])) == spec.captions_per_clip
        assert int(item["video"].max()) > 60  # a digit is visible
        assert float(item["audio"].abs().max()) > 0.1  # a recording is audible


def test_captions_match_the_digit_unless_text_is_misaligned(
    tiny_dataset: Path, decoded: dict
) -> None:
    labels = load_labels(tiny_dataset)
    for sample_id, item in decoded.items():
        lab = labels[sample_id]
        for text in item["text"]:
            named = digits_in_caption(text)
            assert named == {lab["caption_digit"]}, text
            assert motions_in_caption(text) == {lab["caption_motion"]}, text
            if lab["misaligned_text"]:
                assert lab["digit"] not in named
            else:
                assert named == {lab["digit"]}
                assert motions_in_caption(text) == {lab["motion"]}


def test_audio_is_the_recording_of_the_indexed_digit(
    tiny_dataset: Path, decoded: dict, data_source: SourceData, tiny_config: BuildConfig
) -> None:
    """Decoded audio lines up with the source recording it was made from (AAC delay removed)."""
    spec = load_media_spec(tiny_dataset)
    labels = load_labels(tiny_dataset)
    plans = {p.id: p for p in make_plans(tiny_config, data_source)}
    by_name = {r.name: r for r in data_source.recordings}
    for sample_id, item in decoded.items():
        lab, plan = labels[sample_id], plans[sample_id]
        rec = by_name[lab["audio_file"]]
        assert rec.digit == lab["audio_digit"] and rec.speaker == lab["speaker"]
        assert (lab["audio_digit"] != lab["digit"]) == lab["misaligned_audio"]
        wave, rate = data_source.load_waveform(rec)
        expected = place(
            normalize_peak(resample(wave, rate, spec.sample_rate), plan.audio_peak),
            spec.audio_samples,
            plan.audio_position,
        )
        got = item["audio"].numpy()
        corr = float(np.corrcoef(got, expected)[0, 1])
        assert corr > 0.95, (sample_id, corr)
        assert _best_lag(got, expected) == 0, sample_id


def _best_lag(a: np.ndarray, b: np.ndarray) -> int:
    """Shift of a relative to b that maximizes their cross-correlation (FFT)."""
    n = 2 * len(a)
    xc = np.fft.irfft(np.fft.rfft(a, n) * np.conj(np.fft.rfft(b, n)), n)
    lag = int(np.argmax(xc))
    return lag if lag < len(a) else lag - n


def test_video_shows_the_indexed_image_moving_as_labelled(
    tiny_dataset: Path, decoded: dict
) -> None:
    labels = load_labels(tiny_dataset)
    for sample_id, item in decoded.items():
        video = item["video"].numpy()[..., 0].astype(np.float64)
        motion = labels[sample_id]["motion"]
        first, last = video[0], video[-1]
        ys, xs = np.mgrid[: video.shape[1], : video.shape[2]]

        def centre(frame: np.ndarray, grid: np.ndarray) -> float:
            return float((frame * grid).sum() / frame.sum())

        def spread(frame: np.ndarray) -> float:
            return float((frame > 60).sum())

        if motion == "left":
            assert centre(last, xs) < centre(first, xs) - 8
        elif motion == "right":
            assert centre(last, xs) > centre(first, xs) + 8
        elif motion == "up":
            assert centre(last, ys) < centre(first, ys) - 8
        elif motion == "down":
            assert centre(last, ys) > centre(first, ys) + 8
        elif motion == "zoom-in":
            assert spread(last) > 1.5 * spread(first)
        elif motion == "zoom-out":
            assert spread(first) > 1.5 * spread(last)
        else:
            pytest.fail(f"{sample_id}: motion {motion!r} has no check")


def test_shards_reveal_no_labels(tiny_dataset: Path, decoded: dict) -> None:
    """The json member holds only id and captions; nothing else a trainer could read."""
    import tarfile

    summary = load_summary(tiny_dataset)
    for split in summary["splits"].values():
        for shard in split["shards"]:
            with tarfile.open(tiny_dataset / shard) as tar:
                for info in tar:
                    assert info.name.endswith((".json", ".mp4"))
                    if info.name.endswith(".json"):
                        member = tar.extractfile(info)
                        assert member is not None
                        assert set(json.loads(member.read())) == {"id", "captions"}
    assert set(next(iter(decoded.values()))) == {"id", "video", "audio", "text"}

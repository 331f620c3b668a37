"""The builder: splits, noise, determinism, single split, extra source, atomic output."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from harmonia.data import BuildConfig, SourceData, build_dataset, load_summary, read_index
from harmonia.data.plan import make_plans
from harmonia.data.sources import Recording
from harmonia.data.verify import verify_dataset
from harmonia.errors import ConfigError, DataError

SMALL = {"train": 8, "val": 4, "test": 4}


def _binomial_ok(hits: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    """hits is within `sigmas` standard deviations of n*p."""
    return abs(hits - n * p) <= sigmas * math.sqrt(n * p * (1 - p)) + 1


def test_splits_are_speaker_and_image_disjoint(tiny_dataset: Path) -> None:
    records = read_index(tiny_dataset)
    speakers = {
        s: {r["speaker"] for r in records if r["split"] == s} for s in ("train", "val", "test")
    }
    images = {
        s: {r["image_index"] for r in records if r["split"] == s} for s in ("train", "val", "test")
    }
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not speakers[a] & speakers[b]
        assert not images[a] & images[b]
    summary = load_summary(tiny_dataset)
    for split, info in summary["splits"].items():
        lo, hi = info["image_range"]
        assert all(lo <= i < hi for i in images[split])
        assert speakers[split] <= set(info["speakers"])
    assert len({r["id"] for r in records}) == len(records)


def test_index_and_summary_agree(tiny_dataset: Path, tiny_config: BuildConfig) -> None:
    records = read_index(tiny_dataset)
    summary = load_summary(tiny_dataset)
    assert summary["samples"] == len(records) == sum(tiny_config.sizes.values())
    for split, info in summary["splits"].items():
        mine = [r for r in records if r["split"] == split]
        assert info["samples"] == len(mine) == tiny_config.sizes[split]
        assert info["digits"] == {str(d): sum(r["digit"] == d for r in mine) for d in range(10)}
        bad = sum(r["misaligned_text"] or r["misaligned_audio"] for r in mine)
        assert info["noise"]["misaligned"] == pytest.approx(bad / len(mine))
        if split != "train":
            assert bad == 0  # noise goes to the training split only by default
        for r in mine:
            assert r["shard"].startswith(f"shards/{split}-") and r["source"] == "clean"
            assert (r["caption_digit"] != r["digit"]) == r["misaligned_text"]
            assert (r["audio_digit"] != r["digit"]) == r["misaligned_audio"]
    media = summary["media"]
    assert media["audio_samples"] == media["frames"] * media["sample_rate"] // media["fps"]
    assert verify_dataset(tiny_dataset) == []


def test_noise_rate_and_mix_within_sampling_error(data_source: SourceData) -> None:
    """Planned flags follow --noise and --noise-mix (binomial bounds, 4 sigma)."""
    n, rate = 3000, 0.3
    config = BuildConfig(
        sizes={"train": n, "val": 0, "test": 0}, noise=rate, noise_mix=(0.5, 0.3, 0.2)
    )
    plans = make_plans(config, data_source)
    kinds = Counter((p.misaligned_text, p.misaligned_audio) for p in plans)
    noisy = n - kinds[(False, False)]
    assert _binomial_ok(noisy, n, rate)
    assert _binomial_ok(kinds[(True, False)], noisy, 0.5)
    assert _binomial_ok(kinds[(False, True)], noisy, 0.3)
    assert _binomial_ok(kinds[(True, True)], noisy, 0.2)
    digits = Counter(p.digit for p in plans)
    motions = Counter(p.motion for p in plans)
    assert all(_binomial_ok(digits[d], n, 0.1) for d in range(10))
    assert all(_binomial_ok(c, n, 1 / 6) for c in motions.values()) and len(motions) == 6
    for p in plans:
        if p.misaligned_text:
            assert p.caption_digit != p.digit
        if p.misaligned_audio:
            assert p.audio_digit != p.digit
    clean = make_plans(dataclasses.replace(config, noise=0.0), data_source)
    assert not any(p.misaligned_text or p.misaligned_audio for p in clean)


def test_same_seed_same_checksum_other_seed_differs(
    tmp_path: Path, data_source: SourceData
) -> None:
    config = BuildConfig(seed=3, sizes=SMALL, noise=0.5)
    a = build_dataset(config, data_source, tmp_path / "a", workers=1, progress=False)
    b = build_dataset(config, data_source, tmp_path / "b", workers=2, progress=False)
    c = build_dataset(
        dataclasses.replace(config, seed=4), data_source, tmp_path / "c", workers=2, progress=False
    )
    assert a["checksum"] == b["checksum"]
    assert (tmp_path / "a" / "index.jsonl").read_bytes() == (
        tmp_path / "b" / "index.jsonl"
    ).read_bytes()
    for shard in a["splits"]["train"]["shards"]:
        assert (tmp_path / "a" / shard).read_bytes() == (tmp_path / "b" / shard).read_bytes()
    assert c["checksum"] != a["checksum"]


def test_split_sizes_are_independent_streams(data_source: SourceData) -> None:
    """Changing val's size leaves train's samples unchanged."""
    a = make_plans(BuildConfig(sizes={"train": 20, "val": 5, "test": 5}), data_source)
    b = make_plans(BuildConfig(sizes={"train": 20, "val": 9, "test": 5}), data_source)
    assert [p for p in a if p.split == "train"] == [p for p in b if p.split == "train"]


def test_single_split_uses_every_speaker_and_image(tmp_path: Path, data_source: SourceData) -> None:
    config = BuildConfig(sizes={"test": 40}, single_split="test", noise=0.5)
    summary = build_dataset(config, data_source, tmp_path / "t", workers=2, progress=False)
    assert list(summary["splits"]) == ["test"]
    info = summary["splits"]["test"]
    assert info["speakers"] == data_source.speakers
    assert info["image_range"] == [0, int(data_source.images.shape[0])]
    assert info["noise"]["misaligned"] == 0.0  # noise applies to --noise-splits (train) only
    records = read_index(tmp_path / "t")
    assert len(records) == 40 and {r["split"] for r in records} == {"test"}
    assert len({r["speaker"] for r in records}) > 1


def test_extra_noisier_source_is_its_own_split(data_source: SourceData) -> None:
    config = BuildConfig(
        sizes={"train": 400, "val": 0, "test": 0}, noise=0.1, extra=600, extra_noise=0.6
    )
    plans = make_plans(config, data_source)
    extra = [p for p in plans if p.split == "extra"]
    train = [p for p in plans if p.split == "train"]
    assert len(extra) == 600 and all(p.source == "extra" for p in extra)
    assert all(p.source == "clean" for p in train)
    assert {p.speaker for p in extra} <= set(data_source.speakers[:-2])  # the training speakers
    assert _binomial_ok(sum(p.misaligned_text or p.misaligned_audio for p in extra), 600, 0.6)
    assert _binomial_ok(sum(p.misaligned_text or p.misaligned_audio for p in train), 400, 0.1)
    assert len({p.id for p in plans}) == len(plans)


@pytest.mark.parametrize(
    ("changes", "option"),
    [
        ({"noise": 1.5}, "--noise"),
        ({"noise": -0.1}, "--noise"),
        ({"extra_noise": float("nan")}, "--extra-noise"),
        ({"noise_mix": (0.0, 0.0, 0.0)}, "--noise-mix"),
        ({"sizes": {"train": -1}}, "--train"),
        ({"sizes": {"train": 0, "val": 0, "test": 0}}, "empty"),
        ({"shard_size": 0}, "--shard-size"),
        ({"single_split": "dev"}, "--split"),
        ({"noise_splits": ("dev",)}, "--noise-splits"),
    ],
)
def test_invalid_options_name_the_option(changes: dict, option: str) -> None:
    with pytest.raises(ConfigError, match=option):
        BuildConfig(**changes)


def test_existing_output_is_refused_then_replaced_atomically(
    tmp_path: Path, data_source: SourceData
) -> None:
    out = tmp_path / "ds"
    first = build_dataset(
        BuildConfig(seed=1, sizes=SMALL), data_source, out, workers=1, progress=False
    )
    with pytest.raises(DataError, match="already exists"):
        build_dataset(BuildConfig(seed=2, sizes=SMALL), data_source, out, workers=1, progress=False)

    calls = {"n": 0}

    def failing(rec: Recording) -> tuple[np.ndarray, int]:
        calls["n"] += 1
        if calls["n"] > 5:
            raise RuntimeError("disk on fire")
        return data_source.load_waveform(rec)

    broken = dataclasses.replace(data_source, load_waveform=failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        build_dataset(
            BuildConfig(seed=2, sizes=SMALL), broken, out, overwrite=True, workers=1, progress=False
        )
    assert load_summary(out)["checksum"] == first["checksum"]  # the old dataset is untouched
    assert verify_dataset(out) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temporary leftovers

    second = build_dataset(
        BuildConfig(seed=2, sizes=SMALL),
        data_source,
        out,
        overwrite=True,
        workers=1,
        progress=False,
    )
    assert load_summary(out)["checksum"] == second["checksum"] != first["checksum"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_built_in_source_builds_and_decodes(tmp_path: Path) -> None:
    """The fallback (sklearn digits + DTMF tones) goes through the same pipeline."""
    from harmonia.data import ShardDataset
    from harmonia.data.sources import load_builtin

    source = load_builtin()
    assert source.kind == "builtin" and len(source.speakers) == 5
    build_dataset(BuildConfig(sizes=SMALL), source, tmp_path / "b", workers=1, progress=False)
    ds = ShardDataset(tmp_path / "b", ["train", "val", "test"])
    items = [ds[i] for i in range(len(ds))]
    assert all("skipped" not in it for it in items) and len(items) == 16
    assert "NOT speech" in load_summary(tmp_path / "b")["build"]["source"]["warning"]


def test_too_few_speakers_for_three_splits_is_a_clear_error(data_source: SourceData) -> None:
    two = [r for r in data_source.recordings if r.speaker in data_source.speakers[:2]]
    source = dataclasses.replace(data_source, recordings=two)
    with pytest.raises(DataError, match=r"need recordings of >= 3 speakers.*--split"):
        make_plans(BuildConfig(sizes=SMALL), source)
    single = make_plans(BuildConfig(sizes={"test": 10}, single_split="test"), source)
    assert {p.speaker for p in single} <= set(data_source.speakers[:2]) and len(single) == 10

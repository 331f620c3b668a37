"""Corrupt media in a training run: it completes, uses every good sample once per epoch, and lists
every bad one in RUN/summary.json with its reason.

The damage (see `faults.CORRUPTIONS`): truncated, garbage and zero-byte mp4s, an mp4 without
its audio stream, a sample without captions, one whose captions are all zero-length, and the
split's last shard cut in the middle of a member (a truncated tar). The default suite damages
10 of the 48 training samples of the tiny dataset; the slow test builds 480 training samples in
4 shards and damages 5% of them.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from faults import TINY_RUN, corrupt_split, record
from harmonia.cli import main
from harmonia.data import BuildConfig, SourceData, build_dataset, read_index


def train_one_epoch(
    data: Path, run: Path, samples: int, capsys: pytest.CaptureFixture[str]
) -> dict:
    steps = samples // 8
    argv = ["train", "demo", "--out", str(run), "--data", str(data), "--no-progress"]
    assert main([*argv, *TINY_RUN, f"train.steps={steps}", "data.num_workers=2"]) == 0
    printed = capsys.readouterr()
    summary = json.loads((run / "summary.json").read_text())
    assert printed.err == ""
    assert f"skipped {summary['skipped_samples']} corrupt samples" in printed.out
    assert summary["status"] == "finished" and summary["steps"] == steps
    return summary


def check_nothing_lost(data: Path, run: Path, summary: dict, expected: dict[str, str]) -> None:
    records = {r["id"]: r for r in read_index(data, "train")}
    listed = [s["key"] for s in summary["skipped"]]
    assert sorted(listed) == sorted(expected)  # every bad sample, each once
    assert summary["skipped_samples"] == len(expected)
    for skip in summary["skipped"]:
        assert expected[skip["key"]] in skip["reason"], skip
        assert skip["shard"] == records[skip["key"]]["shard"]
    with (run / "ledger.csv").open() as fh:
        seen = {row["id"]: int(row["seen"]) for row in csv.DictReader(fh)}
    good = set(records) - set(expected)
    assert seen == dict.fromkeys(good, 1)  # every good sample trained on, once in the epoch


def test_a_damaged_split_trains_and_reports(
    tmp_path: Path, tiny_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, run = tmp_path / "data", tmp_path / "run"
    shutil.copytree(tiny_dataset, data)
    expected = corrupt_split(data, "train", every=6)
    assert len(expected) == 10
    bad_val = corrupt_split(data, "val", every=5)
    summary = train_one_epoch(data, run, 48, capsys)
    check_nothing_lost(data, run, summary, expected)
    listed = {s["key"]: s["reason"] for s in summary["skipped_validation"]}
    assert listed.keys() == bad_val.keys()  # each once, though validation ran more than once
    assert all(bad_val[key] in reason for key, reason in listed.items()), listed
    record("corrupt_media", samples=48, skipped=summary["skipped_samples"], val_skipped=len(listed))


@pytest.mark.slow
def test_five_percent_damaged_over_several_shards(
    tmp_path: Path, data_source: SourceData, capsys: pytest.CaptureFixture[str]
) -> None:
    data, run = tmp_path / "data", tmp_path / "run"
    config = BuildConfig(seed=1, sizes={"train": 480, "val": 16, "test": 16}, shard_size=120)
    build_dataset(config, data_source, data, workers=2, progress=False)
    expected = corrupt_split(data, "train", every=20)
    assert len(expected) == 26 and len({r["shard"] for r in read_index(data, "train")}) == 4
    summary = train_one_epoch(data, run, 480, capsys)
    check_nothing_lost(data, run, summary, expected)
    record("corrupt_media_5pct", samples=480, skipped=summary["skipped_samples"])

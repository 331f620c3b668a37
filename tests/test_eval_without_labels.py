"""`harmonia eval` and `harmonia audit` on a run trained on a dataset without labels (as
`harmonia data import` writes one from one's own videos: ids, splits, members and metadata only,
some clips silent), and on one that has only the digit label."""

from __future__ import annotations

import csv
import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dataset_edits import replace_members, rewrite_index
from harmonia.cli import main
from harmonia.data.index import load_media_spec, read_index
from harmonia.data.media import decode_mp4, encode_mp4
from harmonia.data.shards import read_member
from harmonia.evaluation.evaluate import evaluate
from harmonia.evaluation.labels import NO_LABELS, missing_label
from harmonia.harmonization.ledger import ConflictLedger
from harmonia.models import VATT
from harmonia.training.config import load_train_config
from harmonia.training.loop import train

STRUCTURE = ("id", "split", "shard", "members")
"""What every index record has; the rest of an AV-MNIST-T record is ground truth."""
SILENT = ("test-000003", "test-000011", "train-000001", "train-000004")
EVIL_SOURCE = '<script>alert("src")</script>.mp4'
TRAIN = ["data.batch_size=8", "train.steps=6", "train.checkpoint_every=6", "train.progress=false"]
"""One epoch of the 48 training clips: each is in the ledger."""
BLOCK = 8
"""Held-out loss block for these tests: the tiny test split (16 clips) is smaller than 32."""
DIRECTIONS = ("text->video", "audio->video", "video->audio")
LABEL_FREE_SKIPS = {
    "zero_shot/digit",
    "zero_shot/motion",
    *(f"retrieval/{d}/class" for d in DIRECTIONS),
    "linear_probe/video/digit",
    "linear_probe/video/motion",
    "linear_probe/audio/digit",
    "noise_detection/ledger",
    *(f"noise_detection/{s}" for s in ("pair_cos/audio", "pair_cos/text", "el2n/audio")),
    "noise_detection/el2n/text",
}


def _silenced(dataset: Path, out: Path) -> Path:
    """A copy of ``dataset`` in which the SILENT clips' audio is all zeros (same frames)."""
    spec = load_media_spec(dataset)
    replacements = {}
    for record in read_index(dataset):
        if record["id"] in SILENT:
            member = record["members"]["mp4"]
            with (dataset / record["shard"]).open("rb") as fh:
                frames, _ = decode_mp4(read_member(fh, member["offset"], member["size"]), spec)
            silence = np.zeros(spec.audio_samples, np.float32)
            replacements[record["id"]] = {"mp4": encode_mp4(frames, silence, spec)}
    assert len(replacements) == len(SILENT)
    return replace_members(dataset, out, replacements)


def _keep_only(*labels: str) -> Callable[[list[dict[str, Any]]], None]:
    """An index edit that drops every ground-truth field but ``labels`` and adds the metadata
    an import records (the file, the clip's start and end in seconds)."""

    def edit(records: list[dict[str, Any]]) -> None:
        for n, record in enumerate(records):
            kept = {k: record[k] for k in (*STRUCTURE, *labels)}
            record.clear()
            record.update(kept)
            file = EVIL_SOURCE if record["id"] in SILENT else f"clips/{record['id']}.mp4"
            record.update(file=file, start=2.5 * n, end=2.5 * n + 2)

    return edit


@pytest.fixture(scope="module")
def silenced(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _silenced(tiny_dataset, tmp_path_factory.mktemp("silenced") / "data")


@pytest.fixture(scope="module")
def unlabelled(silenced: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return rewrite_index(silenced, tmp_path_factory.mktemp("unlabelled") / "data", _keep_only())


@pytest.fixture(scope="module")
def digit_only(silenced: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("digit_only") / "data"
    return rewrite_index(silenced, out, _keep_only("digit"))


@pytest.fixture(scope="module")
def run(unlabelled: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few training steps of the demo config on the label-free dataset."""
    out = tmp_path_factory.mktemp("run") / "run"
    train(load_train_config("demo", TRAIN), out, data_dir=unlabelled)
    return out


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    # the module, not the function the package exports under its name
    module = importlib.import_module("harmonia.evaluation.evaluate")
    monkeypatch.setattr(module, "HELD_OUT_BLOCK", BLOCK)


def test_the_fixture_has_no_labels_and_silent_clips(unlabelled: Path) -> None:
    records = read_index(unlabelled)
    assert {k for r in records for k in r} == {*STRUCTURE, "file", "start", "end"}
    spec = load_media_spec(unlabelled)
    for record in records:
        if record["id"] in SILENT or record["id"] == "test-000000":
            member = record["members"]["mp4"]
            with (unlabelled / record["shard"]).open("rb") as fh:
                _, audio = decode_mp4(read_member(fh, member["offset"], member["size"]), spec)
            assert (not audio.any()) == (record["id"] in SILENT), record["id"]


def test_eval_reports_retrieval_and_losses_and_says_what_it_skipped(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], small_blocks: None
) -> None:
    out = tmp_path / "eval.json"
    assert main(["eval", str(run), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())

    assert result["schema"] == "harmonia.eval/1" and result["n_samples"] == 16
    assert result["zero_shot"] == {} and result["linear_probe"] == {}
    assert result["noise_detection"] == {}
    assert result["train_split"] is None and result["n_train"] == 0  # nothing needed it
    assert set(result["retrieval"]) == set(DIRECTIONS)
    for direction, by_kind in result["retrieval"].items():
        assert set(by_kind) == {"instance"}, direction
        assert 0.0 <= by_kind["instance"]["R@1"] <= by_kind["instance"]["R@10"] <= 1.0
    # the silent test clips are masked: neither queries nor gallery of audio retrieval
    audible = 16 - sum(s.startswith("test-") for s in SILENT)
    a2v, v2a = result["retrieval"]["audio->video"], result["retrieval"]["video->audio"]
    assert a2v["instance"]["n_queries"] == audible and a2v["instance"]["n_gallery"] == 16
    assert v2a["instance"]["n_gallery"] == audible
    assert v2a["instance"]["n_skipped"] == 16 - audible
    assert any("have no audio" in note for note in result["notes"])
    # held-out losses: video-audio over the clips that have audio, video-text over all
    assert set(result["losses"]) == {"va", "vt"}
    for loss in result["losses"].values():
        assert loss["block"] == BLOCK and np.isfinite(loss["loss"])

    assert set(result["skipped_metrics"]) == LABEL_FREE_SKIPS
    assert set(result["skipped_metrics"].values()) == {NO_LABELS}

    assert "retrieval" in printed and "instance" in printed and "held-out losses" in printed
    assert "class:" not in printed and "zero-shot classification" not in printed
    assert "skipped metrics (not computed)" in printed and f"  {NO_LABELS}:" in printed
    assert "    zero_shot: digit, motion" in printed
    assert "    linear_probe: video/digit, video/motion, audio/digit" in printed
    assert "    retrieval: text->video/class, audio->video/class, video->audio/class" in printed


def test_metrics_needing_only_the_digit_run(
    run: Path, digit_only: Path, small_blocks: None
) -> None:
    model = VATT.from_pretrained(run / "model")
    ledger = ConflictLedger.from_csv(run / "ledger.csv").ranking()
    res = evaluate(model, digit_only, "test", ledger=ledger, batch_size=8)
    skipped = res["skipped_metrics"]

    assert set(res["zero_shot"]) == {"digit"} and res["zero_shot"]["digit"]["n"] == 16
    assert skipped["zero_shot/motion"] == "no 'motion' label on the samples of 'test'"
    # class-level audio retrieval needs only the digit; caption classes need the motion too
    assert set(res["retrieval"]["audio->video"]) == {"instance", "class"}
    assert set(res["retrieval"]["video->audio"]) == {"instance", "class"}
    assert set(res["retrieval"]["text->video"]) == {"instance"}
    assert "motion" in skipped["retrieval/text->video/class"]
    # probes: fitted on train (it has the digit), motion skipped
    assert res["train_split"] == "train" and res["n_train"] == 48
    assert set(res["linear_probe"]) == {"video/digit", "audio/digit"}
    assert skipped["linear_probe/video/motion"] == "no 'motion' label on the samples of 'train'"
    # no flags: no noise detection, and the reason names them rather than claiming no labels
    assert res["noise_detection"] == {}
    assert "misaligned_text" in skipped["noise_detection/ledger"]
    assert "misaligned_audio" in skipped["noise_detection/el2n/audio"]
    assert NO_LABELS not in skipped.values()
    assert set(skipped) == {
        "zero_shot/motion",
        "retrieval/text->video/class",
        "linear_probe/video/motion",
        *(k for k in LABEL_FREE_SKIPS if k.startswith("noise_detection/")),
    }


def test_a_label_missing_on_some_samples_is_named_with_the_count() -> None:
    records = [{"digit": 1}, {"digit": None}, {}, {"audio_digit": 4}]
    assert missing_label(records[:1], "digit", where="'test'") is None
    assert missing_label(records, "digit", where="'test'") == (
        "no 'digit' label on 3 of the 4 samples of 'test'"
    )
    # a modality's own label stands in for nothing: the clip's label (the fallback) is named
    assert missing_label(records, "audio_digit", "digit", where="'x'") == (
        "no 'digit' label on 2 of the 4 samples of 'x'"
    )


def test_audit_shows_suspects_without_ground_truth_and_says_why(
    run: Path, unlabelled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "audit.html"
    assert main(["audit", str(run), "--top", "48", "--out", str(out)]) == 0
    assert "48 suspects shown" in capsys.readouterr().out
    text = out.read_text(encoding="utf-8")
    suspects = text.split('id="suspects"')[1]

    assert suspects.count('class="strip"') == 48  # thumbnails
    assert suspects.count("<audio ") == 48 - sum(s.startswith("train-") for s in SILENT)
    assert "no audio (silent clip)" in suspects
    assert '<ul class="caps">' in suspects  # captions
    # ground truth is left out, with a one-line reason, in the scores and the suspects
    assert "<th>ground truth</th>" not in suspects and "badge" not in suspects
    assert "No ground-truth column: the dataset index has no misalignment flags" in suspects
    assert "Precision at k and AUROC are not computed" in text
    assert "AUROC (low score" not in text and "precision among" not in text
    assert "none: the index has no labels or misalignment flags" in text
    assert "video None" not in text and "not in the dataset index" not in suspects
    # where each clip came from, escaped
    first = read_index(unlabelled, "train")[0]
    assert f"file <bdi>clips/{first['id']}.mp4</bdi>" in suspects
    assert f"{first['start']:g}&ndash;{first['end']:g} s" in suspects
    assert EVIL_SOURCE not in text and "&lt;script&gt;alert(&quot;src&quot;)" in suspects

    with (tmp_path / "audit_scores.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == [
        "rank",
        "id",
        "score",
        "conflicts",
        "seen",
        "last_step",
        "split",
        "file",
        "start",
        "end",
    ]
    assert len(rows) == 48
    by_id = {r["id"]: r for r in rows}
    assert by_id[first["id"]]["file"] == f"clips/{first['id']}.mp4"
    assert float(by_id[first["id"]]["end"]) == first["end"]

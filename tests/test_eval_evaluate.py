"""evaluate() and `harmonia eval` on the tiny dataset: known answers from an oracle encoder,
section contracts and invariants from a real (untrained) tiny VATT, and one-line CLI errors."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from harmonia.cli import main
from harmonia.data import (
    MOTIONS,
    ShardDataset,
    digits_in_caption,
    load_labels,
    motions_in_caption,
)
from harmonia.evaluation.evaluate import evaluate
from harmonia.evaluation.labels import noise_flag
from harmonia.harmonization.ledger import ConflictLedger
from harmonia.models import VATT, ModelConfig
from untrained_run import untrained_run


def _key(x: Tensor) -> str:
    return hashlib.sha1(x.contiguous().numpy().tobytes()).hexdigest()


class OracleEncoder(nn.Module):
    """Knows each clip's labels (looked up by the raw media) and embeds them as one-hot vectors.

    Video and text sit at one-hot(digit) + one-hot(motion) in the text space; video and audio at
    one-hot(digit) in the audio space. Every CLIP-style answer is therefore known exactly.
    """

    def __init__(self, dataset: Path) -> None:
        super().__init__()
        self.config = ModelConfig.named("tiny")
        self.labels = load_labels(dataset)
        self.video_label: dict[str, tuple[int, str]] = {}
        self.audio_label: dict[str, int] = {}
        for split in ("train", "test"):
            data = ShardDataset(dataset, split)
            for i in range(len(data)):
                item = data[i]
                rec = self.labels[item["id"]]
                self.video_label[_key(item["video"])] = (rec["digit"], rec["motion"])
                self.audio_label[_key(item["audio"])] = rec["audio_digit"]

    @staticmethod
    def _vt(digit: int, motion: str) -> Tensor:
        v = torch.zeros(16)
        v[digit] = 1.0
        v[10 + MOTIONS.index(motion)] = 1.0
        return F.normalize(v, dim=0)

    @staticmethod
    def _va(digit: int) -> Tensor:
        return F.one_hot(torch.tensor(digit), 10).float()

    def _text(self, caption: str) -> Tensor:
        (digit,) = digits_in_caption(caption)
        (motion,) = motions_in_caption(caption)
        return self._vt(digit, motion)

    def forward(self, batch: Mapping[str, Any]) -> SimpleNamespace:
        video = [self.video_label[_key(v)] for v in batch["video"]]
        audio = [self.audio_label[_key(a)] for a in batch["audio"]]
        text = torch.stack([torch.stack([self._text(c) for c in caps]) for caps in batch["text"]])
        return SimpleNamespace(
            features={
                "video": torch.stack([self._vt(d, m) for d, m in video]),
                "audio": torch.stack([self._va(d) for d in audio]),
            },
            embeddings={
                "va": {
                    "video": torch.stack([self._va(d) for d, _ in video]),
                    "audio": torch.stack([self._va(d) for d in audio]),
                },
                "vt": {"video": torch.stack([self._vt(d, m) for d, m in video]), "text": text},
            },
            valid={"text": torch.ones(text.shape[:2], dtype=torch.bool)},
        )

    def encode(self, modality: str, inputs: list[str], space: str | None = None) -> Tensor:
        assert (modality, space) == ("text", "vt")
        return torch.stack([self._text(c) for c in inputs])


def _ledger_from_flags(dataset: Path, path: Path) -> dict[str, bool]:
    """A ledger that scores every misaligned training sample below every clean one."""
    labels = load_labels(dataset, "train")
    flags = {i: bool(noise_flag(r)) for i, r in labels.items()}
    ledger = ConflictLedger()
    ids = sorted(flags)
    ledger.update(ids, torch.tensor([-0.5 if flags[i] else 0.5 for i in ids]), step=3)
    ledger.to_csv(path)
    return flags


@pytest.fixture(scope="module")
def run_dir(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RUN/ with an untrained tiny VATT, a config naming the dataset and a ledger."""
    run = untrained_run(tiny_dataset, tmp_path_factory.mktemp("run"))
    _ledger_from_flags(tiny_dataset, run / "ledger.csv")
    return run


def test_oracle_encoder_gets_the_known_answers(tiny_dataset: Path, tmp_path: Path) -> None:
    oracle = OracleEncoder(tiny_dataset)
    flags = _ledger_from_flags(tiny_dataset, tmp_path / "ledger.csv")
    ledger = ConflictLedger.from_csv(tmp_path / "ledger.csv").ranking()
    res = evaluate(oracle, tiny_dataset, "test", ledger=ledger, batch_size=5)

    assert res["zero_shot"]["digit"]["accuracy"] == 1.0
    assert res["zero_shot"]["motion"]["accuracy"] == 1.0
    for direction in ("text->video", "audio->video", "video->audio"):
        assert res["retrieval"][direction]["class"]["R@1"] == 1.0
    # class-level ties: every query's rank is the number of gallery clips of its class
    test = load_labels(tiny_dataset, "test")
    digits = [r["digit"] for r in test.values()]
    expected = sorted(digits.count(d) for d in digits)
    mid = len(expected) // 2
    median = (expected[mid - 1] + expected[mid]) / 2 if len(expected) % 2 == 0 else expected[mid]
    assert res["retrieval"]["audio->video"]["instance"]["median_rank"] == median
    singles = sum(c == 1 for c in expected) / len(expected)
    assert res["retrieval"]["audio->video"]["instance"]["R@1"] == pytest.approx(singles)
    assert res["retrieval"]["audio->video"]["class"]["relevance"] == "class:digit"
    assert res["retrieval"]["text->video"]["class"]["relevance"] == "class:digit+motion"
    # probes on one-hot label features are perfect
    assert res["linear_probe"]["video/digit"]["train_accuracy"] == 1.0
    assert res["linear_probe"]["audio/digit"]["train_accuracy"] == 1.0
    # the ledger separates the flags perfectly; the oracle's own pair cosine finds the bad audio
    assert res["noise_detection"]["ledger"]["any"]["auroc"] == 1.0
    assert res["noise_detection"]["ledger"]["any"]["n_noisy"] == sum(flags.values())
    assert res["noise_detection"]["pair_cos/audio"]["audio"]["auroc"] == 1.0
    assert res["noise_detection"]["pair_cos/text"]["text"]["auroc"] > 0.9


def test_untrained_vatt_report_is_complete_and_consistent(
    run_dir: Path, tiny_dataset: Path
) -> None:
    model = VATT.from_pretrained(run_dir / "model")
    ledger = ConflictLedger.from_csv(run_dir / "ledger.csv").ranking()
    res = evaluate(model, tiny_dataset, "test", ledger=ledger, batch_size=8)
    n_test = len(load_labels(tiny_dataset, "test"))
    assert res["schema"] == "harmonia.eval/1" and res["n_samples"] == n_test
    # every label is there: only the held-out losses, for want of a 32-clip block, are skipped
    assert set(res["skipped_metrics"]) == {"losses/va", "losses/vt"}
    assert all("than one block (32)" in r for r in res["skipped_metrics"].values())
    assert set(res["zero_shot"]) == {"digit", "motion"}
    assert set(res["linear_probe"]) == {"video/digit", "video/motion", "audio/digit"}
    for direction, by_kind in res["retrieval"].items():
        inst, cls = by_kind["instance"], by_kind["class"]
        assert inst["n_gallery"] == n_test, direction
        assert 0.0 <= inst["R@1"] <= inst["R@5"] <= inst["R@10"] <= 1.0
        # a class contains the matched item, so class-level ranks can only be better
        assert cls["R@1"] >= inst["R@1"] and cls["median_rank"] <= inst["median_rank"]
    assert res["retrieval"]["text->video"]["instance"]["n_queries"] > n_test
    json.dumps(res)  # JSON-ready
    # batching does not change the numbers
    again = evaluate(model, tiny_dataset, "test", ledger=ledger, batch_size=16)
    for key in ("zero_shot", "retrieval", "linear_probe", "noise_detection"):
        assert _numbers(again[key]) == pytest.approx(_numbers(res[key]), abs=1e-6), key


def _numbers(tree: Any) -> list[float]:
    if isinstance(tree, dict):
        return [x for k in sorted(tree) for x in _numbers(tree[k])]
    return [float(tree)] if isinstance(tree, (int, float)) else []


def test_eval_cli_prints_a_table_and_writes_json(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "res.json"
    assert main(["eval", str(run_dir), "--json", str(out), "--max-train", "24"]) == 0
    printed = capsys.readouterr().out
    assert "zero-shot" in printed and "retrieval" in printed and "class:digit" in printed
    result = json.loads(out.read_text())
    assert result["run"] == str(run_dir) and result["split"] == "test"
    assert result["n_train"] == 24
    assert result["noise_detection"]["ledger"]["any"]["auroc"] is not None
    assert not (run_dir / "eval.json").exists()
    assert main(["eval", str(run_dir), "--split", "val", "--max-train", "16"]) == 0
    assert json.loads((run_dir / "eval.json").read_text())["split"] == "val"


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda run, tmp: ["eval", str(tmp / "nope")], "run directory not found"),
        (lambda run, tmp: ["eval", str(tmp)], "no trained model"),
        (lambda run, tmp: ["eval", str(run), "--data", str(tmp / "nodata")], "dataset directory"),
        (lambda run, tmp: ["eval", str(run), "--split", "extra"], "has no split 'extra'"),
        (lambda run, tmp: ["eval", str(run), "--batch-size", "0"], "--batch-size"),
    ],
)
def test_eval_cli_errors_are_one_line(
    run_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make_args: Any,
    message: str,
) -> None:
    assert main(make_args(run_dir, tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_eval_names_a_recorded_dataset_that_is_gone(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    moved = tmp_path / "run"
    (moved / "model").mkdir(parents=True)
    for f in (run_dir / "model").iterdir():
        (moved / "model" / f.name).write_bytes(f.read_bytes())
    (moved / "config.yaml").write_text(yaml.safe_dump({"data": {"dir": str(tmp_path / "gone")}}))
    assert main(["eval", str(moved)]) == 2
    err = capsys.readouterr().err.strip()
    assert "gone" in err and "data.dir" in err and "--data" in err

"""`data.drop_suspects`: retrain without the samples a finished run's ledger suspects most."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harmonia.data.index import read_index
from harmonia.errors import ConfigError
from harmonia.harmonization.ledger import ConflictLedger
from harmonia.training.config import SuspectsConfig, load_train_config
from harmonia.training.data import suspects_to_drop
from harmonia.training.layout import LEDGER_CSV, TRACE_CSV
from harmonia.training.loop import train

BASE = ["data.batch_size=8", "train.steps=3", "train.checkpoint_every=3", "train.progress=false"]


def _ledger(path: Path, ids: list[str]) -> Path:
    """A ledger whose suspicion order is `ids` (first = most suspected)."""
    ledger = ConflictLedger()
    ledger.update(ids, [-1.0 + i / len(ids) for i in range(len(ids))], step=0)
    return ledger.to_csv(path)


def test_the_most_suspected_fraction_of_the_split_is_named(tiny_dataset: Path, tmp_path) -> None:
    train_ids = [r["id"] for r in read_index(tiny_dataset, "train")]
    other = [r["id"] for r in read_index(tiny_dataset, "val")][:3]
    # val ids first: a ledger of another split's samples must not count against this one
    ledger = _ledger(tmp_path / LEDGER_CSV, [*other, *reversed(train_ids)])
    dropped = suspects_to_drop(SuspectsConfig(str(ledger), 0.25), tiny_dataset, "train")
    assert dropped == list(reversed(train_ids))[: round(0.25 * len(train_ids))]
    assert suspects_to_drop(SuspectsConfig(None, 0.0), tiny_dataset, "train") == []


def test_a_ledger_of_other_data_or_no_ledger_is_a_config_error(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    foreign = _ledger(tmp_path / "foreign.csv", ["not-a-sample-0", "not-a-sample-1"])
    with pytest.raises(ConfigError, match="names none of the"):
        suspects_to_drop(SuspectsConfig(str(foreign), 0.3), tiny_dataset, "train")
    with pytest.raises(ConfigError, match=r"needs the ledger\.csv"):
        suspects_to_drop(SuspectsConfig(None, 0.3), tiny_dataset, "train")
    (tmp_path / "broken.csv").write_text("id,score\nx,1\n")
    with pytest.raises(ConfigError, match=r"drop_suspects\.ledger"):
        suspects_to_drop(SuspectsConfig(str(tmp_path / "broken.csv"), 0.3), tiny_dataset, "train")


def test_retraining_leaves_the_suspects_out(tiny_dataset: Path, tmp_path: Path) -> None:
    first = tmp_path / "first"
    train(load_train_config("demo", BASE), first, data_dir=tiny_dataset)
    suspects = [e.id for e in ConflictLedger.from_csv(first / LEDGER_CSV).ranking()]
    overrides = [
        *BASE,
        f"data.drop_suspects.ledger={first / LEDGER_CSV}",
        "data.drop_suspects.fraction=0.5",
        "harmonize.ledger.trace=true",
    ]
    second = tmp_path / "second"
    summary = train(load_train_config("demo", overrides), second, data_dir=tiny_dataset)
    size = len(read_index(tiny_dataset, "train"))
    assert summary["dropped_suspects"] == round(0.5 * size)
    dropped = set(suspects[: round(0.5 * size)])
    trained_on = {line.split(",")[1] for line in (second / TRACE_CSV).read_text().splitlines()[1:]}
    assert trained_on and not trained_on & dropped


def test_the_cli_names_the_field_when_the_ledger_is_missing(tiny_dataset: Path, tmp_path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "harmonia",
            "train",
            "study-filter",
            "--out",
            str(tmp_path / "r"),
            "--data",
            str(tiny_dataset),
            *BASE,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "data.drop_suspects.ledger" in done.stderr

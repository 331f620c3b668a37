"""The conflict trace and its replay: every observation recorded, the ledger's score rebuilt."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from harmonia.data.index import load_labels
from harmonia.experiments.conflict_scores import (
    LEDGER_SCORES,
    Trace,
    breakdown,
    compare,
    ledger_detection,
    markdown,
    score_variants,
)
from harmonia.harmonization.ledger import ConflictLedger
from harmonia.training.config import load_train_config
from harmonia.training.layout import LEDGER_CSV, TRACE_CSV
from harmonia.training.loop import train

STEPS = 4
BATCH = 8


def _traced_run(out: Path, dataset: Path, score: str) -> Path:
    overrides = [
        f"data.batch_size={BATCH}",
        f"train.steps={STEPS}",
        "train.progress=false",
        "train.checkpoint_every=2",
        "harmonize.ledger.trace=true",
        "harmonize.ledger.decay=0.5",
        f"harmonize.ledger.score={score}",
    ]
    train(load_train_config("demo", overrides), out, data_dir=dataset)
    return out


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory, tiny_dataset: Path) -> Path:
    return _traced_run(tmp_path_factory.mktemp("traced") / "run", tiny_dataset, "gradient_norm")


@pytest.fixture(scope="module")
def traced_by_loss(tmp_path_factory: pytest.TempPathFactory, tiny_dataset: Path) -> Path:
    return _traced_run(tmp_path_factory.mktemp("traced") / "run", tiny_dataset, "loss")


def test_the_trace_holds_one_row_per_sample_and_step(traced: Path) -> None:
    with (traced / TRACE_CSV).open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == STEPS * BATCH
    assert sorted({int(r["step"]) for r in rows}) == list(range(STEPS))
    assert {"loss_va", "loss_vt", "gram_va_va", "gram_va_vt", "gram_vt_vt"} <= set(rows[0])
    for r in rows:  # a Gram is positive semi-definite
        assert float(r["gram_va_va"]) >= 0 and float(r["gram_vt_vt"]) >= 0
        assert float(r["gram_va_vt"]) ** 2 <= float(r["gram_va_va"]) * float(r["gram_vt_vt"]) * (
            1 + 1e-4
        )


@pytest.mark.parametrize("score", ["gradient_norm", "loss"])
def test_replaying_the_trace_rebuilds_the_ledger(
    score: str, traced: Path, traced_by_loss: Path
) -> None:
    run = traced if score == "gradient_norm" else traced_by_loss
    stored = {e.id: e.score for e in ConflictLedger.from_csv(run / LEDGER_CSV)}
    variants = score_variants("va", "vt", decay=0.5)
    name = next(n for n in variants if f"ledger score '{score}'" in n)
    replayed = {k: -v for k, v in variants[name](Trace.read(run)).items()}
    assert set(replayed) == set(stored)
    for sample_id, value in stored.items():
        assert replayed[sample_id] == pytest.approx(value, abs=1e-4), sample_id


def test_every_ledger_score_is_scored_on_the_same_observations(
    traced: Path, tiny_dataset: Path
) -> None:
    labels = load_labels(tiny_dataset)
    found = ledger_detection(Trace.read(traced), labels)
    assert set(found) == set(LEDGER_SCORES)
    table = compare([(Trace.read(traced), labels)])
    for kind, targets in found.items():
        name = next(n for n in table if f"ledger score '{kind}'" in n)
        for target, result in targets.items():
            assert result["auroc"] == pytest.approx(table[name][target][0])
            assert 0.0 <= result["precision_at_k"] <= 1.0
            assert result["n"] <= len(set(Trace.read(traced).ids))


def test_the_comparison_scores_every_variant_against_the_flags(
    traced: Path, tiny_dataset: Path
) -> None:
    table = compare([(Trace.read(traced), load_labels(tiny_dataset))])
    assert set(table) == set(score_variants("va", "vt"))
    for targets in table.values():
        for values in targets.values():
            assert all(0.0 <= v <= 1.0 for v in values)
    text = markdown(table)
    assert text.count("\n") == len(table) + 1 and "(n=1)" in text
    assert np.isfinite([v for t in table.values() for vs in t.values() for v in vs]).all()
    # the tiny dataset has clean and misaligned triplets: both rows appear, with counts
    rows = breakdown(Trace.read(traced), load_labels(tiny_dataset)).splitlines()
    assert rows[2].startswith("| clean |") and any("wrong" in r for r in rows[3:])

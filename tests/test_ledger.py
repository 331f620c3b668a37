"""ConflictLedger: EMA maths, counts, ranking, CSV/JSON round trips, merge semantics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from harmonia.errors import CheckpointError, ConfigError
from harmonia.harmonization.ledger import CSV_COLUMNS, ConflictLedger


def records(ledger: ConflictLedger) -> dict[str, tuple[float, int, int, int]]:
    return {e.id: (e.score, e.conflicts, e.seen, e.last_step) for e in ledger}


def test_ema_matches_a_hand_computed_sequence() -> None:
    ledger = ConflictLedger(decay=0.8)
    for step, value in enumerate([0.5, -0.5, 0.25, -0.1], start=1):
        ledger.update(["a"], torch.tensor([value], dtype=torch.float64), step)
    # 0.5 (first observation) -> 0.8*0.5 + 0.2*(-0.5) = 0.3 -> 0.29 -> 0.212
    entry = ledger.entry("a")
    assert entry.score == pytest.approx(0.212, abs=1e-15)
    assert (entry.conflicts, entry.seen, entry.last_step) == (2, 4, 4)


def test_decay_zero_keeps_the_latest_score_and_first_observation_initializes() -> None:
    ledger = ConflictLedger(decay=0.0)
    ledger.update(["a", "b"], np.array([0.3, -0.2]), 7)
    ledger.update(["a"], np.array([-0.6]), 9)
    assert records(ledger) == {"a": (-0.6, 1, 2, 9), "b": (-0.2, 1, 1, 7)}
    fresh = ConflictLedger(decay=0.99)
    fresh.update(["x"], np.array([-0.75]), 0)
    assert fresh.entry("x").score == -0.75  # not 0.01 * -0.75


def test_repeated_id_in_one_batch_folds_in_order() -> None:
    batch = ConflictLedger(decay=0.6)
    batch.update(["a", "b", "a", "a"], np.array([0.2, 0.1, -0.4, 0.9]), 3)
    one_by_one = ConflictLedger(decay=0.6)
    for sample_id, value in [("a", 0.2), ("b", 0.1), ("a", -0.4), ("a", 0.9)]:
        one_by_one.update([sample_id], np.array([value]), 3)
    assert records(batch) == records(one_by_one)
    assert batch.entry("a").seen == 3


def test_non_finite_scores_are_ignored() -> None:
    ledger = ConflictLedger()
    ledger.update(["a", "b", "c"], torch.tensor([float("nan"), 0.4, float("inf")]), 1)
    assert ledger.ids == ["b"] and "a" not in ledger and len(ledger) == 1


def test_conflict_threshold_decides_what_counts_as_a_conflict() -> None:
    default = ConflictLedger()
    default.update(["zero", "neg"], np.array([0.0, -1e-9]), 0)
    assert default.entry("zero").conflicts == 0 and default.entry("neg").conflicts == 1
    strict = ConflictLedger(conflict_threshold=0.2)
    strict.update(["a"], np.array([0.1]), 0)
    assert strict.entry("a").conflicts == 1


def test_score_of_uses_the_prior_for_unseen_ids_and_suspicion_is_its_negation() -> None:
    ledger = ConflictLedger(prior=0.1)
    ledger.update(["a", "b"], np.array([0.7, -0.3]), 2)
    assert ledger.score_of(["b", "zz", "a"]).tolist() == [-0.3, 0.1, 0.7]
    assert ledger.score_of(["zz"], prior=-0.5).tolist() == [-0.5]
    assert ledger.score_of(["a"]).dtype == torch.float64
    assert ledger.suspicion(["b", "zz", "a"]).tolist() == [0.3, -0.1, -0.7]


def test_suspicion_feeds_an_auroc_against_ground_truth_flags() -> None:
    rng = np.random.default_rng(0)
    ids = [f"clip-{i:03d}" for i in range(200)]
    misaligned = rng.random(200) < 0.3
    ledger = ConflictLedger(decay=0.5)
    for step in range(5):  # noisy per-step cosines, misaligned ones lower on average
        noise = rng.normal(0.0, 0.4, 200)
        ledger.update(ids, np.clip(np.where(misaligned, -0.3, 0.3) + noise, -1, 1), step)
    auroc = roc_auc_score(misaligned, ledger.suspicion(ids))
    assert auroc > 0.9
    chance = roc_auc_score(misaligned, ledger.suspicion(ids[::-1]))
    assert abs(chance - 0.5) < 0.15  # misaligned scores to the wrong ids: no signal


def test_ranking_puts_the_most_suspected_first_with_deterministic_ties() -> None:
    ledger = ConflictLedger(decay=0.0)
    ledger.update(["c", "b", "a", "d"], np.array([-0.5, 0.2, -0.5, 0.9]), 1)
    ledger.update(["c"], np.array([-0.5]), 2)  # same score as "a", more conflicts
    ranked = ledger.ranking()
    assert [e.id for e in ranked] == ["c", "a", "b", "d"]
    assert [e.rank for e in ranked] == [1, 2, 3, 4]
    assert ledger.ranking(k=2) == ranked[:2]
    assert ledger.ranking(k=0) == []
    assert ConflictLedger().ranking() == []
    with pytest.raises(ValueError, match="k must be"):
        ledger.ranking(k=-1)


def _random_ledger(seed: int, size: int = 50) -> ConflictLedger:
    rng = np.random.default_rng(seed)
    ledger = ConflictLedger(decay=0.7)
    ids = [f"id/{i},x" for i in range(size)]  # a comma and slash to exercise CSV quoting
    for step in range(6):
        chosen = rng.choice(size, size=size // 2, replace=False)
        ledger.update([ids[i] for i in chosen], rng.uniform(-1, 1, chosen.size), step * 10)
    return ledger


def test_csv_round_trip_is_exact_and_ranked(tmp_path: Path) -> None:
    ledger = _random_ledger(1)
    path = ledger.to_csv(tmp_path / "run" / "ledger.csv")
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(CSV_COLUMNS)
    assert len(lines) == len(ledger) + 1
    back = ConflictLedger.from_csv(path, decay=0.7)
    assert records(back) == records(ledger)
    assert [e.id for e in back.ranking()] == [e.id for e in ledger.ranking()]
    assert sorted(p.name for p in path.parent.iterdir()) == ["ledger.csv"]  # no temp files


def test_csv_missing_column_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("id,score\na,0.1\n")
    with pytest.raises(CheckpointError, match="missing column"):
        ConflictLedger.from_csv(path)


def test_state_dict_round_trips_through_json(tmp_path: Path) -> None:
    ledger = _random_ledger(2)
    state = json.loads(json.dumps(ledger.state_dict()))
    restored = ConflictLedger()
    restored.load_state_dict(state)
    assert restored.decay == 0.7 and records(restored) == records(ledger)
    batch = (["id/3,x", "new"], np.array([0.25, -0.75]))
    ledger.update(*batch, 99)
    restored.update(*batch, 99)
    assert restored.state_dict() == ledger.state_dict()
    path = ledger.save(tmp_path / "ledger.json")
    assert ConflictLedger.load(path).state_dict() == ledger.state_dict()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.update(version=7), "version"),
        (lambda s: s.update(seen=s["seen"][:-1]), "different lengths"),
        (lambda s: s.update(ids=[s["ids"][0]] * len(s["ids"])), "not unique"),
        (lambda s: s.update(score=[float("nan")] * len(s["ids"])), "finite"),
        (lambda s: s.update(conflicts=[c + 100 for c in s["seen"]]), "conflicts <= seen"),
        (lambda s: s.pop("last_step"), "invalid ledger columns"),
        (lambda s: s.update(decay=1.5), "settings"),
    ],
)
def test_corrupt_states_raise_checkpoint_error(change: object, message: str) -> None:
    state = _random_ledger(3, size=8).state_dict()
    change(state)  # type: ignore[operator]
    with pytest.raises(CheckpointError, match=message):
        ConflictLedger.from_state_dict(state)


def test_unreadable_files_raise_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match="not a readable ledger"):
        ConflictLedger.load(path)
    with pytest.raises(CheckpointError, match="not a readable ledger"):
        ConflictLedger.load(tmp_path / "missing.json")


@pytest.mark.parametrize(
    "settings_", [{"decay": 1.0}, {"decay": -0.1}, {"prior": 1.5}, {"conflict_threshold": -2}]
)
def test_invalid_settings_raise_config_error(settings_: dict) -> None:
    with pytest.raises(ConfigError, match=next(iter(settings_))):
        ConflictLedger(**settings_)


def test_update_rejects_bad_input() -> None:
    ledger = ConflictLedger()
    with pytest.raises(ValueError, match="shape"):
        ledger.update(["a", "b"], np.zeros(3), 0)
    with pytest.raises(ValueError, match="step"):
        ledger.update(["a"], np.zeros(1), -1)
    with pytest.raises(TypeError, match="strings"):
        ledger.update([7], np.zeros(1), 0)  # type: ignore[list-item]


# ---------------------------------------------------------------- properties
update_ops = st.lists(
    st.tuples(
        st.lists(st.sampled_from("abcdefg"), min_size=1, max_size=6),
        st.lists(st.floats(-1, 1), min_size=6, max_size=6),
        st.integers(0, 20),
    ),
    max_size=8,
)


def _ledger_from(ops: list, decay: float = 0.75) -> ConflictLedger:
    ledger = ConflictLedger(decay=decay)
    for ids, values, step in ops:
        ledger.update(ids, np.array(values[: len(ids)]), step)
    return ledger


@settings(max_examples=80, deadline=None)
@given(update_ops)
def test_columnar_ledger_matches_a_plain_python_reference(ops: list) -> None:
    reference: dict[str, list] = {}
    for ids, values, step in ops:
        for sample_id, value in zip(ids, values, strict=False):
            if sample_id in reference:
                record = reference[sample_id]
                record[0] = 0.75 * record[0] + 0.25 * value
            else:
                record = reference[sample_id] = [value, 0, 0, 0]
            record[1] += value < 0
            record[2] += 1
            record[3] = step
    ledger = _ledger_from(ops)
    assert set(records(ledger)) == set(reference)
    for sample_id, (score, conflicts, seen, last) in records(ledger).items():
        assert score == pytest.approx(reference[sample_id][0], abs=1e-12)
        assert [conflicts, seen, last] == reference[sample_id][1:]

"""Numerical faults: a NaN/Inf in a loss or a gradient skips the step (logged) and changes no
state; a bounded number of consecutive bad steps stops the run (exit 3, one line) with a
checkpoint of the last good state, from which it resumes.

Faults are injected in-process (`faults.NumericFaults` patches the loop's objective class and
harmonizer factory): into one loss, into one parameter's gradient after the harmonized
backward, or into the gradient reaching the shared anchor, which the Harmonizer measures
(GradVac keeps an EMA of the measured cosines: a NaN must not reach it).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from faults import (
    NUMERIC_FAULTS,
    TINY_RUN,
    NumericFaults,
    assert_same_weights,
    record,
    same_tree,
    weights,
)
from harmonia.cli import main
from harmonia.training.checkpoint import checkpoint_dir, latest_checkpoint, load_checkpoint
from harmonia.training.logging import read_metrics

RUN = [
    *TINY_RUN,
    "harmonize.method=gradvac",
    "harmonize.curriculum.name=sigmoid",
    "train.checkpoint_every=1",
    "train.keep_last=20",
]


def train(run: Path, data: Path, *extra: str) -> int:
    argv = ["train", "demo", "--out", str(run), "--data", str(data), "--no-progress"]
    return main([*argv, *RUN, *extra])


def unchanged_by(run: Path, step: int) -> None:
    """The checkpoint after ``step`` holds the state of the one before: nothing was applied."""
    before, after = checkpoint_dir(run, step - 1), checkpoint_dir(run, step)
    assert_same_weights(before, after)
    a, b = load_checkpoint(before).state, load_checkpoint(after).state
    assert same_tree(a["optimizer"]["state"], b["optimizer"]["state"])
    assert same_tree(a["harmonizer"]["method_state"], b["harmonizer"]["method_state"])
    assert same_tree(a["objective"], b["objective"])


@pytest.mark.parametrize("kind", NUMERIC_FAULTS)
def test_a_non_finite_step_is_skipped_and_logged(
    kind: str,
    tmp_path: Path,
    tiny_dataset: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "run"
    NumericFaults({2: kind}).install(monkeypatch)
    assert train(run, tiny_dataset, "train.steps=4") == 0
    printed = capsys.readouterr()
    assert "step 2: non-finite loss or gradient" in printed.out and "skipped" in printed.out
    assert printed.err == ""
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["bad_step"] for r in rows] == [0.0, 1.0, 0.0, 0.0]
    unchanged_by(run, 2)
    for row in (rows[0], *rows[2:]):  # the state stayed finite: training goes on
        assert all(math.isfinite(row[k]) for k in ("loss/va", "loss/vt", "grad_norm"))
    later = weights(checkpoint_dir(run, 3))
    assert any(not later[k].equal(v) for k, v in weights(checkpoint_dir(run, 2)).items())
    state = load_checkpoint(checkpoint_dir(run, 4)).state
    target = state["harmonizer"]["method_state"]["target"]
    assert bool(target.isfinite().all()) and float(target.abs().max()) > 0
    assert state["guard"] == {"consecutive": 0, "total": 1}


def test_consecutive_bad_steps_stop_with_the_last_good_state(
    tmp_path: Path,
    tiny_dataset: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "run"
    NumericFaults({3: "nan-loss", 4: "inf-grad", 5: "nan-anchor-grad"}).install(monkeypatch)
    assert train(run, tiny_dataset, "train.steps=7", "train.max_bad_steps=3") == 3
    lines = capsys.readouterr().err.strip().splitlines()
    stopped = latest_checkpoint(run)
    assert stopped is not None and stopped.name == "step-00000005"
    assert lines == [
        f"harmonia: error: stopped at step 5: 3 consecutive steps had a non-finite loss or "
        f"gradient; last good state saved in {stopped} (lower optim.lr or check the data)"
    ]
    for step in (3, 4, 5):
        unchanged_by(run, step)  # so step 5's checkpoint is the state after step 2
    assert not (run / "model").exists()
    assert train(run, tiny_dataset, "train.steps=7", "train.max_bad_steps=3", "--resume") == 0
    final = latest_checkpoint(run)
    assert final is not None and load_checkpoint(final).state["guard"] == {
        "consecutive": 0,
        "total": 3,
    }
    assert (run / "model" / "model.safetensors").is_file()
    record("numerical_faults", injected=len(NUMERIC_FAULTS) + 3, stopped_at=5)

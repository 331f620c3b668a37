"""Learning health: each loss judged learned / memorizes / near chance from its losses vs. ln B."""

from __future__ import annotations

import math

from harmonia.training.health import LossHealth, judge, learning_health


def test_verdicts_follow_the_training_and_held_out_losses() -> None:
    chance, val_chance = math.log(32), math.log(64)
    assert judge("va", 0.5 * chance, 0.5 * val_chance, 32, 64).verdict == "learned"
    assert judge("va", 0.5 * chance, 1.02 * val_chance, 32, 64).verdict == "memorizes"
    assert judge("va", 0.5 * chance, None, 32, 64).verdict == "memorizes"
    assert judge("va", 0.99 * chance, 0.5 * val_chance, 32, 64).verdict == "near chance"


def test_learning_health_reads_every_loss_of_a_metrics_row() -> None:
    row = {"loss/total": 5.0, "loss/va": 3.4, "loss/vt": 1.0, "val/loss/vt": 1.5, "lr": 1e-3}
    health = learning_health(row, 32, 64)
    assert set(health) == {"va", "vt"}
    assert health["va"].verdict == "near chance" and health["va"].held_out is None
    assert health["vt"].learned
    assert "learned" in health["vt"].sentence() and "64%" in health["vt"].sentence()
    assert "near chance" in health["va"].sentence()
    again = LossHealth.from_dict("vt", health["vt"].to_dict())
    assert again == health["vt"]


def test_missing_values_are_skipped() -> None:
    assert learning_health({"loss/va": None, "val/loss/vt": 1.0}, 32, 64) == {}

"""The study's verdict rule and claims (`harmonia.experiments.verdicts`) on hand-made numbers.

Each case sits next to a boundary of the rule, where a wrong comparison would flip the outcome:
|d| just under the threshold, one seed disagreeing, one cell hurting.
"""

from __future__ import annotations

from typing import Any

import pytest

from harmonia.experiments.analysis import Delta, Stat, metric
from harmonia.experiments.plan import ALTERNATIVES, PAPER_VARIANTS, Budget
from harmonia.experiments.verdicts import (
    CONFLICT_SPECIFICITY,
    EFFECT_THRESHOLD,
    HEADLINE,
    Cell,
    Comparison,
    ConflictOrigin,
    ScalingClaim,
    Tally,
    judge_study,
    verdict,
)


def delta(mean: float, wins: int, n: int = 3, seed_std: float = 1.0) -> Delta:
    """A paired difference whose effect size is `mean / seed_std` (both arms' std = seed_std)."""
    return Delta(Stat(mean, 0.1, n), Stat(0.0, seed_std, n), Stat(mean, seed_std, n), wins)


def test_an_effect_just_under_the_threshold_is_no_clear_effect() -> None:
    assert EFFECT_THRESHOLD == 1.0
    just_under = delta(0.999, wins=3)
    assert just_under.effect == pytest.approx(0.999)
    assert verdict(just_under) == "no clear effect"
    assert verdict(delta(-0.999, wins=0)) == "no clear effect"
    assert verdict(delta(1.0, wins=3)) == "helps"
    assert verdict(delta(-1.0, wins=0)) == "hurts"


def test_seeds_disagreeing_is_no_clear_effect_however_large_the_effect() -> None:
    assert verdict(delta(5.0, wins=2)) == "no clear effect"
    assert verdict(delta(-5.0, wins=1)) == "no clear effect"
    # a large mean difference in the "wrong" direction for the wins is not a verdict either
    assert verdict(delta(5.0, wins=0)) == "no clear effect"


def test_too_few_seeds_no_runs_and_constant_arms() -> None:
    assert verdict(delta(5.0, wins=1, n=1)) == "too few seeds"
    assert verdict(None) == "no runs"
    constant = Delta(Stat(0.1, 0.0, 3), Stat(0.5, 0.0, 3), Stat(0.6, 0.0, 3), 3)
    assert constant.effect is None  # pooled seed std 0
    assert verdict(constant) == "helps"
    same = Delta(Stat(0.0, 0.0, 3), Stat(0.5, 0.0, 3), Stat(0.5, 0.0, 3), 0)
    assert verdict(same) == "no clear effect"


def _cells(*deltas: Delta | None) -> tuple[Cell, ...]:
    return tuple(Cell(metric("t2v"), 0.2, d) for d in deltas)


def test_a_cell_carries_its_effect_size_direction_and_verdict() -> None:
    better, worse = _cells(delta(1.5, wins=3), delta(-0.5, wins=1))
    assert (better.verdict, better.effect_size, better.direction) == ("helps", 1.5, "better")
    assert (worse.verdict, worse.effect_size, worse.direction) == (
        "no clear effect",
        -0.5,
        "worse",
    )
    (missing,) = _cells(None)
    assert (missing.verdict, missing.effect_size, missing.direction) == ("no runs", None, None)


def test_one_hurting_cell_stops_a_claim_from_holding() -> None:
    helps, hurts, unclear = delta(2.0, wins=3), delta(-2.0, wins=0), delta(0.2, wins=2)
    assert Tally.of(_cells(helps, unclear, unclear)).outcome == "helps"
    assert Tally.of(_cells(helps, helps, hurts)).outcome == "mixed"
    assert Tally.of(_cells(hurts, unclear)).outcome == "hurts"
    assert Tally.of(_cells(unclear, unclear)).outcome == "no clear effect"
    # cells that could not be judged neither help nor hurt; only all of them untested is untested
    assert Tally.of(_cells(helps, None)).outcome == "helps"
    assert Tally.of(_cells(None, delta(2.0, wins=1, n=1))).outcome == "not tested"
    assert Tally.of(()).outcome == "not tested"
    count = Tally.of(_cells(helps, hurts, None, None))
    assert (count["helps"], count["hurts"], count["no runs"], count.total) == (1, 1, 2, 4)


def test_the_scaling_claim_needs_harmonization_to_help_and_the_baseline_not_to() -> None:
    helps, hurts, unclear = delta(2.0, wins=3), delta(-2.0, wins=0), delta(0.2, wins=2)

    def claim(harmonized: tuple[Delta, ...], plain: tuple[Delta, ...]) -> bool:
        return ScalingClaim(
            {
                "baseline": Comparison("baseline", "baseline", _cells(*plain)),
                "gr+cl": Comparison("gr+cl", "gr+cl", _cells(*harmonized)),
            }
        ).holds

    assert claim((helps, unclear), (unclear, unclear))
    assert not claim((helps, hurts), (unclear, unclear))  # harmonized hurts somewhere
    assert not claim((helps, unclear), (helps, unclear))  # helps without harmonization too
    assert not claim((unclear, unclear), (unclear, unclear))


def test_conflicts_are_specific_to_misalignment_only_well_below_the_noisiest_share() -> None:
    noisiest = Stat(0.5, 0.0, 3)
    at_boundary = Stat(CONFLICT_SPECIFICITY * 0.5, 0.0, 3)
    assert ConflictOrigin(at_boundary, noisiest, 0.4).specific
    assert not ConflictOrigin(Stat(0.2501, 0.0, 3), noisiest, 0.4).specific


BUDGET = Budget(
    "test", seeds=3, steps=1, train=10, val=10, test=10, noise_rates=(0.0, 0.4), description="t"
)


def _run(variant: str, noise: float, seed: int, **values: float) -> dict[str, Any]:
    """An ablation result whose headline metrics are `values` (by metric key, default 0.5)."""
    value = {key: values.get(key, 0.5) + 0.01 * seed for key in HEADLINE}
    return {
        "name": f"{variant}-{noise}-{seed}",
        "spec": {"study": "ablation", "variant": variant, "noise": noise, "seed": seed},
        "eval": {
            "zero_shot": {"digit": {"accuracy": value["zs_digit"]}},
            "retrieval": {
                "text->video": {"class": {"R@1": value["t2v"]}},
                "audio->video": {"class": {"R@1": value["a2v"]}},
            },
            "linear_probe": {"video/digit": {"accuracy": value["probe_vd"]}},
        },
    }


def _study(**gr_at_noisiest: float) -> list[dict[str, Any]]:
    runs = []
    for seed in range(3):
        for noise in BUDGET.noise_rates:
            runs.append(_run("baseline", noise, seed))
            better = {key: 0.55 for key in HEADLINE}  # +5 points, seed std 1 point: d = 5
            runs.append(_run("gr", noise, seed, **(gr_at_noisiest if noise else better)))
    return runs


def test_judge_study_advises_an_arm_that_helps_everywhere() -> None:
    judged = judge_study(BUDGET, _study(**{key: 0.55 for key in HEADLINE}))
    gr = judged.versus_baseline["gr"]
    assert set(judged.versus_baseline) == {*PAPER_VARIANTS, *ALTERNATIVES}
    assert [c.verdict for c in gr.cells] == ["helps"] * 8
    assert [c.metric.key for c in gr.at(0.4)] == list(HEADLINE)
    assert gr.outcome == "helps"
    assert judged.versus_baseline["cl"].outcome == "not tested"  # no runs
    assert judged.advice.helpful == ("gr",)
    assert judged.advice.instead == ()
    assert not judged.fragile


def test_judge_study_drops_an_arm_that_hurts_in_one_cell() -> None:
    hurting = {key: 0.55 for key in HEADLINE} | {"t2v": 0.45}
    judged = judge_study(BUDGET, _study(**hurting))
    gr = judged.versus_baseline["gr"]
    assert [(c.noise, c.metric.key) for c in gr.cells if c.verdict == "hurts"] == [(0.4, "t2v")]
    assert gr.outcome == "mixed"
    assert judged.advice.helpful == ()


def test_judge_study_calls_an_effect_under_the_threshold_no_clear_effect() -> None:
    # baseline seeds 0.50/0.51/0.52 (std 0.01); +0.0099 everywhere: d = 0.99, every seed wins
    judged = judge_study(BUDGET, _study(**{key: 0.5099 for key in HEADLINE}))
    noisiest = judged.versus_baseline["gr"].at(0.4)
    assert all(c.effect_size == pytest.approx(0.99) for c in noisiest)
    assert all(c.delta is not None and c.delta.wins == 3 for c in noisiest)
    assert {c.verdict for c in noisiest} == {"no clear effect"}
    assert judged.versus_baseline["gr"].outcome == "helps"  # the clean rate still helps


def test_failed_runs_are_ignored_and_few_seeds_are_fragile() -> None:
    results = [*_study(), {"name": "broken", "error": "boom"}]
    few = Budget("few", seeds=2, steps=1, train=1, val=1, test=1, noise_rates=(0.0, 0.4))
    assert judge_study(few, results).fragile
    assert judge_study(BUDGET, results).versus_baseline["gr"].tally.total == 8

"""Online conflict curricula: schedules, weights, keep-at-least-one, factory errors, properties."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harmonia.errors import ConfigError
from harmonia.harmonization import Harmonizer
from harmonia.harmonization.curriculum import (
    CURRICULA,
    Curriculum,
    QuantileCurriculum,
    Shape,
    SigmoidCurriculum,
    ThresholdCurriculum,
    build_curriculum,
    relaxation,
)
from harmonia.harmonization.protocols import CurriculumLike

DOCS = Path(__file__).resolve().parents[1] / "docs" / "curriculum.md"


def test_relaxation_schedules_at_start_middle_and_end() -> None:
    assert relaxation(0.0, 0.5, "linear") == 0.0
    assert relaxation(0.125, 0.5, "linear") == pytest.approx(0.25)
    assert relaxation(0.125, 0.5, "cosine") == pytest.approx(0.5 * (1 - math.cos(math.pi / 4)))
    assert relaxation(0.25, 0.5, "cosine") == pytest.approx(0.5)
    for shape in ("linear", "cosine"):
        assert relaxation(0.5, 0.5, shape) == 1.0
        assert relaxation(1.0, 0.5, shape) == 1.0
    assert relaxation(0.0, 0.0, "linear") == 1.0  # no warm-up: relaxed from the first step
    with pytest.raises(ValueError, match="shape"):
        relaxation(0.1, 0.5, "step")


@pytest.mark.parametrize("shape", ["linear", "cosine"])
def test_threshold_moves_from_start_to_minus_one(shape: Shape) -> None:
    curriculum = ThresholdCurriculum(start=0.2, warmup=0.4, shape=shape)
    assert curriculum.threshold(0.0) == pytest.approx(0.2)
    assert curriculum.threshold(0.2) == pytest.approx((0.2 - 1.0) / 2)
    assert curriculum.threshold(0.4) == -1.0
    assert curriculum.threshold(1.0) == -1.0
    assert curriculum.describe(0.0) == {"tau": pytest.approx(0.2)}


def test_hard_threshold_keeps_at_or_above_tau_and_drops_to_exact_zero() -> None:
    curriculum = ThresholdCurriculum(start=0.0, end=-1.0, warmup=0.5)
    score = torch.tensor([-0.9, -0.3, 0.0, 0.4, -0.6, 1.0])
    assert curriculum.weights(score, 0.0).tolist() == [0.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    tau = curriculum.threshold(0.2)  # -0.4
    expected = (score >= tau).float()
    assert torch.equal(curriculum.weights(score, 0.2), expected)
    assert curriculum.weights(score, 0.2).tolist() == [0.0, 1.0, 1.0, 1.0, 0.0, 1.0]


@pytest.mark.parametrize("name", sorted(CURRICULA))
def test_every_sample_is_kept_with_weight_one_at_the_end(name: str) -> None:
    curriculum = build_curriculum(name, warmup=0.6)
    score = torch.tensor([-1.0, -1.0000001, -0.999, -0.5, 0.0, 0.7, 1.0])
    for progress in (0.6, 0.8, 1.0):
        assert torch.equal(curriculum.weights(score, progress), torch.ones(7))


def test_threshold_keeps_the_best_sample_when_all_fall_below_tau() -> None:
    curriculum = ThresholdCurriculum(start=0.5)
    score = torch.tensor([-0.2, 0.1, -0.9, 0.1])
    assert curriculum.weights(score, 0.0).tolist() == [0.0, 1.0, 0.0, 0.0]  # tie: first index
    three = ThresholdCurriculum(start=0.5, min_keep=3)
    assert three.weights(score, 0.0).tolist() == [1.0, 1.0, 0.0, 1.0]
    # once enough samples pass tau on their own, min_keep adds nothing
    assert three.weights(torch.tensor([0.6, 0.7, 0.8, -1.0]), 0.0).tolist() == [1, 1, 1, 0]
    assert ThresholdCurriculum(start=0.5, min_keep=0).weights(score, 0.0).sum() == 0.0
    assert ThresholdCurriculum(start=1.0).weights(torch.tensor([-1.0]), 0.0).tolist() == [1.0]


def test_sigmoid_follows_its_formula_and_fades_to_one() -> None:
    curriculum = SigmoidCurriculum(start=0.1, end=-1.0, warmup=0.5, temperature=0.2)
    score = torch.linspace(-1, 1, 21, dtype=torch.float64)
    start = curriculum.weights(score, 0.0)
    torch.testing.assert_close(start, torch.sigmoid((score - 0.1) / 0.2), rtol=0, atol=1e-15)
    relaxed = 0.5  # progress 0.25 is half-way through the warm-up
    tau = curriculum.threshold(0.25)
    expected = relaxed + (1 - relaxed) * torch.sigmoid((score - tau) / 0.2)
    torch.testing.assert_close(curriculum.weights(score, 0.25), expected, rtol=0, atol=1e-15)
    assert bool((start.diff() > 0).all()), "strictly increasing in the score"
    assert bool((curriculum.weights(score, 0.25) >= start).all())


def test_quantile_keeps_the_top_fraction_by_count() -> None:
    curriculum = QuantileCurriculum(start=0.3, end=1.0, warmup=0.5)
    score = torch.tensor([0.5, -0.1, 0.9, 0.2, -0.7, 0.3, 0.8, -0.2, 0.0, 0.4])
    kept = curriculum.weights(score, 0.0)
    assert set(torch.nonzero(kept).flatten().tolist()) == {0, 2, 6}
    assert curriculum.keep_fraction(0.25) == pytest.approx(0.65)
    assert int(curriculum.weights(score, 0.25).sum()) == 7  # ceil(0.65 * 10)
    assert int(curriculum.weights(score[:3], 0.0).sum()) == 1  # ceil(0.9) = 1


def test_quantile_ignores_the_scale_of_the_scores() -> None:
    generator = torch.Generator().manual_seed(0)
    score = torch.rand(64, generator=generator) * 2 - 1
    curriculum = QuantileCurriculum(start=0.25)
    drifted = 0.1 * score + 0.5  # same order, another scale and offset
    for progress in (0.0, 0.1, 0.3):
        assert torch.equal(
            curriculum.weights(score, progress), curriculum.weights(drifted, progress)
        )


def test_nan_scores_count_as_neutral() -> None:
    score = torch.tensor([float("nan"), -0.5, 0.5])
    assert ThresholdCurriculum(start=0.0).weights(score, 0.0).tolist() == [1.0, 0.0, 1.0]
    assert ThresholdCurriculum(start=0.1).weights(score, 0.0).tolist() == [0.0, 0.0, 1.0]
    assert SigmoidCurriculum(start=0.0).weights(score, 0.0)[0] == 0.5


@pytest.mark.parametrize("name", sorted(CURRICULA))
def test_weights_keep_dtype_and_carry_no_gradient(name: str) -> None:
    curriculum = build_curriculum(name)
    score = torch.tensor([0.3, -0.4, 0.1], dtype=torch.bfloat16, requires_grad=True)
    weights = curriculum.weights(score, 0.1)
    assert weights.dtype == torch.bfloat16 and not weights.requires_grad
    assert curriculum.weights(torch.zeros(0), 0.3).shape == (0,)


@pytest.mark.parametrize("progress", [-0.01, 1.01, float("nan")])
def test_progress_outside_unit_interval_is_rejected(progress: float) -> None:
    with pytest.raises(ValueError, match="progress must be in"):
        ThresholdCurriculum().weights(torch.zeros(3), progress)


def test_score_must_be_a_vector() -> None:
    with pytest.raises(ValueError, match="1-D"):
        SigmoidCurriculum().weights(torch.zeros(2, 3), 0.0)


@pytest.mark.parametrize("name", sorted(CURRICULA))
def test_factory_round_trips_through_to_config(name: str) -> None:
    curriculum = build_curriculum(name, warmup=0.3, shape="cosine")
    config = curriculum.to_config()
    assert config["name"] == name
    assert build_curriculum(**config) == curriculum
    assert isinstance(curriculum, Curriculum)


@pytest.mark.parametrize(
    ("name", "options", "field"),
    [
        ("threshold", {"start": 1.5}, "start"),
        ("threshold", {"start": 0.0, "end": 0.5}, "end"),
        ("threshold", {"warmup": 1.5}, "warmup"),
        ("threshold", {"min_keep": -1}, "min_keep"),
        ("sigmoid", {"shape": "exponential"}, "shape"),
        ("sigmoid", {"temperature": 0.0}, "temperature"),
        ("sigmoid", {"temperature": float("inf")}, "temperature"),
        ("quantile", {"start": -0.1}, "start"),
        ("quantile", {"start": 0.8, "end": 0.5}, "end"),
        ("quantile", {"start": "half"}, "start"),
        ("threshold", {"min_keep": 1.5}, "min_keep"),
        ("threshold", {"temperature": 0.1}, "temperature"),
    ],
)
def test_factory_names_the_invalid_field(name: str, options: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"curriculum '{name}'.*\b{field}\b"):
        build_curriculum(name, **options)


def test_factory_lists_known_curricula_for_an_unknown_name() -> None:
    with pytest.raises(ConfigError, match=r"unknown curriculum 'hardest'.*quantile, sigmoid"):
        build_curriculum("hardest")


def _configs() -> st.SearchStrategy[Curriculum]:
    unit = st.floats(0.0, 1.0)
    cosine = st.floats(-1.0, 1.0)
    shape = st.sampled_from(["linear", "cosine"])
    threshold = st.builds(
        lambda start, gap, warmup, shape, keep: ThresholdCurriculum(
            warmup=warmup, shape=shape, start=start, end=max(-1.0, start - gap), min_keep=keep
        ),
        cosine,
        st.floats(0.0, 2.0),
        unit,
        shape,
        st.integers(0, 3),
    )
    sigmoid = st.builds(
        lambda start, gap, warmup, shape, temperature: SigmoidCurriculum(
            warmup=warmup,
            shape=shape,
            start=start,
            end=max(-1.0, start - gap),
            temperature=temperature,
        ),
        cosine,
        st.floats(0.0, 2.0),
        unit,
        shape,
        st.floats(1e-3, 10.0),
    )
    quantile = st.builds(
        lambda start, gap, warmup, shape, keep: QuantileCurriculum(
            warmup=warmup, shape=shape, start=start, end=min(1.0, start + gap), min_keep=keep
        ),
        unit,
        unit,
        unit,
        shape,
        st.integers(0, 3),
    )
    return st.one_of(threshold, sigmoid, quantile)


scores = st.lists(st.floats(-1.0, 1.0), min_size=1, max_size=40).map(
    lambda values: torch.tensor(values, dtype=torch.float64)
)


@settings(max_examples=150, deadline=None)
@given(_configs(), scores, st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_weights_are_in_unit_interval_and_monotone(
    curriculum: Curriculum, score: torch.Tensor, p: float, q: float
) -> None:
    early, late = sorted((p, q))
    weights = curriculum.weights(score, early)
    assert bool(((weights >= 0) & (weights <= 1)).all())
    higher = score[:, None] > score[None, :]
    assert bool((weights[:, None] >= weights[None, :])[higher].all()), "monotone in score"
    assert bool((curriculum.weights(score, late) >= weights).all()), "relaxes over training"
    assert torch.equal(curriculum.weights(score, early), weights), "deterministic"


@settings(max_examples=60, deadline=None)
@given(_configs(), scores)
def test_min_keep_is_honoured(curriculum: Curriculum, score: torch.Tensor) -> None:
    keep = getattr(curriculum, "min_keep", 0)
    assert int((curriculum.weights(score, 0.0) > 0).sum()) >= min(keep, score.numel())


def test_docs_snippets_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The python blocks of docs/curriculum.md run, in order, in one namespace."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, str(DOCS), "exec"), namespace)


@pytest.mark.parametrize("name", sorted(CURRICULA))
def test_curricula_satisfy_the_harmonizer_protocol(name: str) -> None:
    assert isinstance(build_curriculum(name), CurriculumLike)


def test_a_dropped_sample_does_not_train_the_encoder_through_the_harmonizer() -> None:
    """End to end: the encoder's gradient is that of the kept samples alone."""
    torch.manual_seed(0)
    encoder = torch.nn.Linear(5, 3).double()
    heads = [torch.nn.Linear(3, 1).double() for _ in range(2)]
    x, targets = torch.randn(12, 5).double(), torch.randn(2, 12, 1).double()

    def losses(rows: slice | torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        anchor = encoder(x[rows])
        per_loss = {
            f"l{k}": ((head(anchor) - targets[k][rows]) ** 2).sum() for k, head in enumerate(heads)
        }
        return anchor, per_loss

    curriculum = ThresholdCurriculum(start=0.0, warmup=0.5)
    harmonizer = Harmonizer(method="none", space="embedding", curriculum=curriculum)
    anchor, per_loss = losses(slice(None))
    stats = harmonizer.backward(per_loss, anchor, encoder=encoder, progress=0.0)
    kept = stats.weights > 0
    assert 0 < int(kept.sum()) < 12
    assert torch.equal(stats.weights, curriculum.weights(stats.conflict, 0.0).double())
    harmonized = [p.grad.clone() for p in encoder.parameters()]  # type: ignore[union-attr]

    encoder.zero_grad()
    _, kept_loss = losses(kept)  # samples do not interact: the kept ones alone
    sum(kept_loss.values()).backward()  # type: ignore[union-attr]
    for got, want in zip(harmonized, encoder.parameters(), strict=True):
        torch.testing.assert_close(got, want.grad, rtol=0, atol=1e-12)

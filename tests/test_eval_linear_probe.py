"""Linear probe on separable and on uninformative features."""

from __future__ import annotations

import numpy as np
import pytest

from harmonia.evaluation.linear_probe import linear_probe


def _clusters(n: int, seed: int, spread: float) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=n)
    centres = np.array([[10.0, 0, 0, 0], [0, 10.0, 0, 0], [0, 0, 10.0, 0]])
    return centres[labels] + spread * rng.standard_normal((n, 4)), labels.tolist()


def test_separable_features_are_probed_perfectly() -> None:
    xtr, ytr = _clusters(90, 0, 1.0)
    xev, yev = _clusters(60, 1, 1.0)
    res = linear_probe(xtr, ytr, xev, yev)
    assert res.accuracy == 1.0 and res.train_accuracy == 1.0
    assert res.n_train == 90 and res.n_eval == 60 and res.n_classes == 3


def test_uninformative_features_stay_near_chance_and_probe_is_deterministic() -> None:
    rng = np.random.default_rng(2)
    xtr, xev = rng.standard_normal((300, 8)), rng.standard_normal((300, 8))
    ytr, yev = rng.integers(0, 2, 300).tolist(), rng.integers(0, 2, 300).tolist()
    a = linear_probe(xtr, ytr, xev, yev)
    b = linear_probe(xtr, ytr, xev, yev)
    assert a == b
    assert abs(a.accuracy - 0.5) < 0.12
    assert 0.5 <= a.chance < 0.6


def test_standardization_makes_scale_irrelevant() -> None:
    xtr, ytr = _clusters(90, 0, 4.0)
    xev, yev = _clusters(60, 1, 4.0)
    plain = linear_probe(xtr, ytr, xev, yev)
    scaled = linear_probe(xtr * 1e4, ytr, xev * 1e4, yev)
    assert plain.accuracy == pytest.approx(scaled.accuracy, abs=1 / 60)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="two classes"):
        linear_probe(np.zeros((4, 2)), [1, 1, 1, 1], np.zeros((2, 2)), [1, 0])
    with pytest.raises(ValueError, match="equal D"):
        linear_probe(np.zeros((4, 2)), [0, 1, 0, 1], np.zeros((2, 3)), [1, 0])

"""AUROC / AP of noise scores on cases with known values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harmonia.evaluation.noise_detection import detection_metrics, error_norm


def test_perfect_and_inverted_rankings() -> None:
    noisy = [True, True, False, False, False]
    cos = [-0.9, -0.5, 0.3, 0.5, 0.9]  # low cosine = noisy
    good = detection_metrics(cos, noisy, higher_is_noisier=False)
    assert good.auroc == 1.0 and good.average_precision == 1.0 and good.precision_at_k == 1.0
    bad = detection_metrics(cos, noisy, higher_is_noisier=True)
    assert bad.auroc == 0.0 and bad.precision_at_k == 0.0
    assert good.prevalence == pytest.approx(0.4) and good.n_noisy == 2


def test_known_partial_auroc_and_ap() -> None:
    # suspicion ranking: noisy, clean, noisy, clean -> 3 of 4 (noisy, clean) pairs are ordered right
    suspicion = [4.0, 3.0, 2.0, 1.0]
    noisy = [True, False, True, False]
    res = detection_metrics(suspicion, noisy, higher_is_noisier=True)
    assert res.auroc == pytest.approx(0.75)
    # AP = mean precision at each true positive = (1/1 + 2/3) / 2
    assert res.average_precision == pytest.approx((1 + 2 / 3) / 2)
    assert res.precision_at_k == 0.5


def test_ties_give_half_credit() -> None:
    res = detection_metrics([1.0, 1.0], [True, False], higher_is_noisier=True)
    assert res.auroc == 0.5


def test_single_class_ground_truth_is_reported_as_undefined() -> None:
    res = detection_metrics([0.1, 0.2, 0.3], [False, False, False], higher_is_noisier=False)
    assert res.auroc is None and res.average_precision is None and res.n_noisy == 0


def test_random_scores_have_auroc_near_half() -> None:
    rng = np.random.default_rng(0)
    res = detection_metrics(rng.random(4000), rng.random(4000) < 0.3, higher_is_noisier=True)
    assert res.auroc is not None and abs(res.auroc - 0.5) < 0.03
    assert res.average_precision is not None and abs(res.average_precision - res.prevalence) < 0.03


def test_input_validation() -> None:
    with pytest.raises(ValueError):
        detection_metrics([0.1, 0.2], [True], higher_is_noisier=True)
    with pytest.raises(ValueError, match="NaN"):
        detection_metrics([np.nan, 0.2], [True, False], higher_is_noisier=True)


def test_error_norm_is_low_for_matched_pairs_and_high_for_swapped() -> None:
    emb = torch.nn.functional.normalize(
        torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    )
    partner = emb.clone()
    partner[[0, 1]] = partner[[1, 0]]  # samples 0 and 1 are misaligned
    scores = error_norm(emb @ partner.T, temperature=0.05)
    assert scores[:2].min() > scores[2:].max()
    assert scores.min() >= 0 and scores.max() <= 2**0.5 + 1e-12
    res = detection_metrics(
        scores.numpy(), [True, True, False, False, False, False], higher_is_noisier=True
    )
    assert res.auroc == 1.0


def test_precision_at_k_counts_only_samples_with_ground_truth() -> None:
    from harmonia.evaluation.noise_detection import precision_at

    ranked = [True, None, False, True, None, True]
    assert precision_at(ranked, 2) == 0.5  # True, False (the unknown one is skipped)
    assert precision_at(ranked, 4) == 0.75
    assert precision_at(ranked, 5) is None  # only 4 known

"""Method ``none``: coefficients are all ones (measure only)."""

from __future__ import annotations

import torch

from harmonia.harmonization.methods import NoSurgery, build_method


def test_coefficients_are_ones_whatever_the_conflict() -> None:
    vectors = torch.randn(4, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    vectors[:, 1] = -vectors[:, 0]
    gram = vectors @ vectors.transpose(1, 2)
    combination = NoSurgery()(gram, torch.Generator())
    assert torch.equal(combination.coefficients, torch.ones(4, 3, dtype=torch.float64))
    assert combination.info == {}
    assert isinstance(build_method("none"), NoSurgery)

"""NCE and MIL-NCE against a plain float64 reference, gradients, masks and invariances."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from harmonia.losses import milnce, nce

TOL = 1e-10


def unit(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def random_mask(batch: int, k: int, seed: int, p: float = 0.7) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1000)
    return torch.rand(batch, k, generator=g) < p


def reference_nce(a: torch.Tensor, b: torch.Tensor, tau: float) -> list[float]:
    """Symmetric InfoNCE written out term by term: mean of the a->b and b->a cross-entropies."""
    n = a.shape[0]
    s = [[float(a[i] @ b[j]) / tau for j in range(n)] for i in range(n)]
    out = []
    for i in range(n):
        row = -math.log(math.exp(s[i][i]) / sum(math.exp(s[i][j]) for j in range(n)))
        col = -math.log(math.exp(s[i][i]) / sum(math.exp(s[j][i]) for j in range(n)))
        out.append(0.5 * (row + col))
    return out


def reference_milnce(
    v: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, tau: float
) -> list[float]:
    """MIL-NCE per sample with masked candidates; samples without a valid caption give 0."""
    n, k = mask.shape
    present = [bool(mask[i].any()) for i in range(n)]

    def e(i: int, j: int, c: int) -> float:  # exp(v_i . t_jc / tau)
        return math.exp(float(v[i] @ t[j, c]) / tau)

    out = []
    for i in range(n):
        if not present[i]:
            out.append(0.0)
            continue
        pos = sum(e(i, i, c) for c in range(k) if mask[i, c])
        v_to_t = sum(e(i, j, c) for j in range(n) for c in range(k) if mask[j, c])
        t_to_v = sum(e(j, i, c) for c in range(k) if mask[i, c] for j in range(n) if present[j])
        out.append(0.5 * (-math.log(pos / v_to_t) - math.log(pos / t_to_v)))
    return out


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_nce_matches_reference(seed: int, tau: float) -> None:
    a, b = unit(7, 5, seed=seed), unit(7, 5, seed=seed + 50)
    got = nce(a, b, tau, reduction="none")
    want = torch.tensor(reference_nce(a, b, tau), dtype=torch.float64)
    torch.testing.assert_close(got, want, atol=TOL, rtol=0)
    torch.testing.assert_close(nce(a, b, tau), want.mean(), atol=TOL, rtol=0)
    torch.testing.assert_close(nce(a, b, tau, reduction="sum"), want.sum(), atol=TOL, rtol=0)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [1, 3])
def test_milnce_matches_reference_with_masks(seed: int, k: int) -> None:
    v, t = unit(6, 4, seed=seed), unit(6, k, 4, seed=seed + 50)
    mask = random_mask(6, k, seed)
    got = milnce(v, t, 0.07, valid=mask, reduction="none")
    want = torch.tensor(reference_milnce(v, t, mask, 0.07), dtype=torch.float64)
    torch.testing.assert_close(got, want, atol=TOL, rtol=0)
    present = mask.any(dim=1)
    mean = want.sum() / present.sum()
    torch.testing.assert_close(milnce(v, t, 0.07, valid=mask), mean, atol=TOL, rtol=0)


def test_milnce_without_mask_matches_reference() -> None:
    v, t = unit(5, 8, seed=3), unit(5, 4, 8, seed=4)
    everything = torch.ones(5, 4, dtype=torch.bool)
    want = torch.tensor(reference_milnce(v, t, everything, 0.07), dtype=torch.float64)
    torch.testing.assert_close(milnce(v, t, reduction="none"), want, atol=TOL, rtol=0)


@pytest.mark.parametrize("seed", range(3))
def test_milnce_with_one_caption_equals_nce(seed: int) -> None:
    a, b = unit(9, 6, seed=seed), unit(9, 6, seed=seed + 7)
    valid = random_mask(9, 1, seed)[:, 0]
    assert torch.equal(
        milnce(a, b[:, None], valid=valid, reduction="none"),
        nce(a, b, valid=valid, reduction="none"),
    )


def test_nce_mask_drops_the_sample_everywhere() -> None:
    a, b = unit(6, 4, seed=1), unit(6, 4, seed=2)
    valid = torch.tensor([True, False, True, True, False, True])
    got = nce(a, b, valid=valid, reduction="none")
    keep = valid.nonzero().squeeze(1)
    alone = nce(a[keep], b[keep], reduction="none")
    torch.testing.assert_close(got[keep], alone, atol=TOL, rtol=0)
    assert torch.all(got[~valid] == 0)


def test_milnce_sample_mask_is_caption_mask_broadcast() -> None:
    v, t = unit(5, 4, seed=5), unit(5, 3, 4, seed=6)
    valid = torch.tensor([True, True, False, True, True])
    assert torch.equal(
        milnce(v, t, valid=valid, reduction="none"),
        milnce(v, t, valid=valid[:, None].expand(5, 3), reduction="none"),
    )


def test_no_valid_sample_gives_zero_and_finite_gradient() -> None:
    a = unit(4, 3, seed=0).requires_grad_()
    b = unit(4, 2, 3, seed=1).requires_grad_()
    loss = milnce(a, b, valid=torch.zeros(4, 2, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0
    assert a.grad is not None and b.grad is not None
    assert torch.all(a.grad == 0) and torch.all(b.grad == 0)


def test_gradcheck_nce_and_milnce_including_temperature() -> None:
    a = unit(4, 3, seed=0).requires_grad_()
    b = unit(4, 3, seed=1).requires_grad_()
    t = unit(4, 2, 3, seed=2).requires_grad_()
    tau = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, False], [True, True], [False, False], [False, True]])
    assert torch.autograd.gradcheck(lambda x, y, s: nce(x, y, s), (a, b, tau))
    assert torch.autograd.gradcheck(lambda x, y, s: milnce(x, y, s, valid=mask), (a, t, tau))
    per_sample = lambda x, y: milnce(x, y, 0.2, valid=mask, reduction="none")  # noqa: E731
    assert torch.autograd.gradcheck(per_sample, (a, t))


def test_bf16_inputs_are_computed_in_float32() -> None:
    a, b = unit(6, 8, seed=0), unit(6, 8, seed=1)
    low = nce(a.bfloat16(), b.bfloat16())
    assert low.dtype == torch.float32
    assert abs(low.item() - nce(a, b).item()) < 0.05


def test_bad_arguments_are_rejected_with_clear_messages() -> None:
    a, b = unit(4, 3, seed=0), unit(4, 3, seed=1)
    with pytest.raises(ValueError, match="one shape"):
        nce(a, b[:3])
    with pytest.raises(ValueError, match=r"t \[B, K, E\]"):
        milnce(a, b)
    with pytest.raises(ValueError, match="valid mask has shape"):
        nce(a, b, valid=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="temperature"):
        nce(a, b, temperature=0.0)
    with pytest.raises(ValueError, match="reduction"):
        nce(a, b, reduction="avg")  # type: ignore[arg-type]


bags = st.tuples(st.integers(2, 6), st.integers(1, 4), st.integers(2, 5), st.integers(0, 10_000))


@settings(max_examples=30, deadline=None)
@given(bags)
def test_per_sample_losses_are_permutation_equivariant(shape: tuple[int, int, int, int]) -> None:
    n, k, d, seed = shape
    v, t, mask = unit(n, d, seed=seed), unit(n, k, d, seed=seed + 1), random_mask(n, k, seed)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    base = milnce(v, t, valid=mask, reduction="none")
    permuted = milnce(v[perm], t[perm], valid=mask[perm], reduction="none")
    torch.testing.assert_close(permuted, base[perm], atol=TOL, rtol=0)
    shuffled = torch.randperm(k, generator=torch.Generator().manual_seed(seed + 2))
    within = milnce(v, t[:, shuffled], valid=mask[:, shuffled], reduction="none")
    torch.testing.assert_close(within, base, atol=TOL, rtol=0)


@settings(max_examples=30, deadline=None)
@given(bags)
def test_losses_are_rotation_invariant_and_ignore_invalid_content(
    shape: tuple[int, int, int, int],
) -> None:
    n, k, d, seed = shape
    v, t, mask = unit(n, d, seed=seed), unit(n, k, d, seed=seed + 1), random_mask(n, k, seed)
    base = milnce(v, t, valid=mask, reduction="none")
    q, _ = torch.linalg.qr(
        torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    )
    torch.testing.assert_close(
        milnce(v @ q, t @ q, valid=mask, reduction="none"), base, atol=1e-9, rtol=0
    )
    noise = unit(n, k, d, seed=seed + 3)
    changed = torch.where(mask[:, :, None], t, noise)
    torch.testing.assert_close(
        milnce(v, changed, valid=mask, reduction="none"), base, atol=TOL, rtol=0
    )
    assert torch.all(base >= -TOL)

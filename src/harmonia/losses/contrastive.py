"""Symmetric NCE (video-audio) and MIL-NCE (video-text, K candidate captions) with masks.

Both are one loss: sample i's anchor ``a_i`` has a bag of candidates ``b_i1..b_iK``, all of
them positives (MIL-NCE, Miech et al. 2020; NCE is the bag of one). With scores
``s(x, y) = x . y / temperature`` the per-sample loss is the mean of two directions:

    a -> b:  -log  sum_k s(a_i, b_ik)  /  sum_{j,k} s(a_i, b_jk)       (sums of exp)
    b -> a:  -log  sum_k s(a_i, b_ik)  /  sum_{k,j} s(a_j, b_ik)

so for K = 1 it is the CLIP/VATT symmetric InfoNCE. (The original MIL-NCE puts both directions
in one denominator; splitting them makes K = 1 equal NCE exactly.) Invalid candidates are
neither positives nor negatives; a sample with no valid candidate (or a missing anchor) drops
out of the loss: its per-sample loss is 0, it is no one's negative, and the mean is over valid
samples only. Embeddings are used as given (the model L2-normalizes them).

``gather`` supplies negatives from other processes (see `harmonia.losses.gather`): rows are
local samples, columns the gathered global batch.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from harmonia.losses.gather import Gather, local_gather
from harmonia.losses.temperature import DEFAULT_TEMPERATURE

Reduction = Literal["mean", "sum", "none"]


def nce(
    a: Tensor,
    b: Tensor,
    temperature: float | Tensor = DEFAULT_TEMPERATURE,
    valid: Tensor | None = None,
    reduction: Reduction = "mean",
    gather: Gather | None = None,
) -> Tensor:
    """Symmetric NCE between paired embeddings a [B, E] and b [B, E]; ``valid`` is bool [B]."""
    if a.dim() != 2 or b.shape != a.shape:
        raise ValueError(
            f"nce: expected a and b of one shape [B, E], got {list(a.shape)} and {list(b.shape)}"
        )
    mask = None if valid is None else _check_mask(valid, (a.shape[0],), "nce")[:, None]
    return bag_nce(a, b[:, None, :], mask, temperature, reduction, gather)


def milnce(
    v: Tensor,
    t: Tensor,
    temperature: float | Tensor = DEFAULT_TEMPERATURE,
    valid: Tensor | None = None,
    reduction: Reduction = "mean",
    gather: Gather | None = None,
) -> Tensor:
    """MIL-NCE between v [B, E] and K candidates t [B, K, E]; ``valid`` bool [B] or [B, K]."""
    if v.dim() != 2 or t.dim() != 3 or t.shape[0] != v.shape[0] or t.shape[2] != v.shape[1]:
        raise ValueError(
            f"milnce: expected v [B, E] and t [B, K, E], got {list(v.shape)} and {list(t.shape)}"
        )
    mask = None
    if valid is not None:
        mask = valid if valid.dim() == 2 else _check_mask(valid, (v.shape[0],), "milnce")[:, None]
        mask = _check_mask(mask.expand(t.shape[:2]), tuple(t.shape[:2]), "milnce")
    return bag_nce(v, t, mask, temperature, reduction, gather)


def bag_nce(
    a: Tensor,
    bags: Tensor,
    mask: Tensor | None,
    temperature: float | Tensor,
    reduction: Reduction,
    gather: Gather | None,
) -> Tensor:
    """The shared computation of `nce` and `milnce` (see the module docstring)."""
    if isinstance(temperature, (int, float)) and temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be mean, sum or none, got {reduction!r}")
    if a.dtype in (torch.float16, torch.bfloat16):
        a, bags = a.float(), bags.float()
    batch, k, _ = bags.shape
    own = torch.ones(batch, k, dtype=torch.bool, device=a.device) if mask is None else mask.bool()
    gather = gather or local_gather
    all_a, start = gather(a)
    all_bags = gather(bags).tensor
    all_mask = gather(own.to(torch.uint8)).tensor.bool()
    rows = torch.arange(batch, device=a.device)
    cols = rows + start
    low = torch.finfo(a.dtype).min
    present = own.any(dim=1)

    ab = torch.einsum("be,nke->bnk", a, all_bags) / temperature
    ab = ab.masked_fill(~all_mask[None], low)
    a_to_b = ab.flatten(1).logsumexp(1) - ab[rows, cols].logsumexp(1)

    ba = torch.einsum("bke,ne->bkn", bags, all_a) / temperature
    ba = ba.masked_fill(~(own[:, :, None] & all_mask.any(dim=1)[None, None, :]), low)
    b_to_a = ba.flatten(1).logsumexp(1) - ba[rows, :, cols].logsumexp(1)

    zero = a.new_zeros(())
    per_sample = 0.5 * (torch.where(present, a_to_b, zero) + torch.where(present, b_to_a, zero))
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return per_sample.sum()
    return per_sample.sum() / present.sum().clamp(min=1)


def _check_mask(mask: Tensor, shape: tuple[int, ...], name: str) -> Tensor:
    if tuple(mask.shape) != shape:
        raise ValueError(f"{name}: valid mask has shape {list(mask.shape)}, expected {list(shape)}")
    return mask.bool()

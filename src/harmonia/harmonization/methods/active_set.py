"""Exact solutions of the tiny quadratic programs behind UPGrad and MGDA, batched over samples.

With M losses a program has M unknowns, so every active set (support) can be tried at once:
``2^M`` small linear systems per sample, solved with a symmetric pseudo-inverse. Each candidate
is made feasible, scored by the true objective, and the best one kept. The optimum is always a
candidate (some optimal point has a support whose system is non-singular), so the answer is exact
up to rounding: no iterations, no tolerances to tune, the same on CPU and GPU.
"""

from __future__ import annotations

import torch
from torch import Tensor

MAX_TASKS = 10
"""Enumeration costs ``2^M`` solves per sample; beyond this many losses it is too slow."""


def supports(tasks: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """All subsets of ``range(tasks)`` as 0/1 rows: ``[2^M, M]`` (row 0 is the empty set)."""
    if tasks > MAX_TASKS:
        raise ValueError(f"active-set methods support at most {MAX_TASKS} losses, got {tasks}")
    codes = torch.arange(2**tasks, device=device).view(-1, 1)
    bits = 2 ** torch.arange(tasks, device=device)
    return ((codes & bits) > 0).to(dtype)


def best_candidate(candidates: Tensor, objective: Tensor, feasible: Tensor) -> Tensor:
    """The feasible candidate ``[..., S, M] -> [..., M]`` with the lowest objective.

    Objectives are evaluated through a unit-scale Gram matrix, so a candidate with multipliers
    ``x`` carries a rounding error of about ``eps (1 + |x|)^2``. Candidates that cannot be told
    apart from the best within those errors (degenerate problems, where several supports give
    the same optimum) are decided in favour of the smallest multipliers: the best-conditioned
    support, whose combination suffers least from cancellation.
    """
    size = 1.0 + candidates.abs().sum(-1)
    error = 64 * torch.finfo(candidates.dtype).eps * size.square()
    score = torch.where(feasible, objective, torch.inf)
    ceiling = (score + error).amin(dim=-1, keepdim=True)
    tied = feasible & (score - error <= ceiling)
    index = torch.where(tied, size, torch.inf).argmin(dim=-1)
    picked = candidates.gather(
        -2, index[..., None, None].expand(*index.shape, 1, candidates.shape[-1])
    )
    return picked.squeeze(-2)


def normalized(gram: Tensor, *others: Tensor) -> tuple[Tensor, ...]:
    """Divide each sample's ``G`` (and matching linear terms) by its largest diagonal entry.

    The solutions below are invariant to that scale, and the linear systems are far better
    conditioned at unit scale (a GradScaler's factor, or tiny gradients, would otherwise leak
    into the bordered systems' conditioning).
    """
    scale = gram.diagonal(dim1=1, dim2=2).amax(-1).clamp_min(torch.finfo(gram.dtype).tiny)
    return tuple(t / scale.view(-1, *([1] * (t.dim() - 1))) for t in (gram, *others))


def refined_solve(system: Tensor, rhs: Tensor) -> Tensor:
    """``pinv(A) b`` for symmetric ``A [..., n, n]`` and ``b [..., n]``, plus one refinement step.

    The step (solve again for the residual) recovers most of the accuracy that near-singular
    supports lose, which matters when the optimum needs large multipliers.
    """
    inverse = torch.linalg.pinv(system, hermitian=True)
    x = (inverse @ rhs[..., None]).squeeze(-1)
    residual = rhs - (system @ x[..., None]).squeeze(-1)
    return x + (inverse @ residual[..., None]).squeeze(-1)


def nonnegative_qp(gram: Tensor, linear: Tensor) -> Tensor:
    """``argmin_{x >= 0} x^T G x / 2 + q^T x`` for ``G [B, M, M]`` and ``q [B, N, M]``: ``[B, N, M]``.

    ``N`` independent programs share each sample's ``G`` (UPGrad solves one per loss).
    """
    gram, linear = normalized(gram, linear)
    tasks = gram.shape[-1]
    sets = supports(tasks, gram.device, gram.dtype)  # [S, M]
    outer = sets[:, :, None] * sets[:, None, :]
    system = outer * gram[:, None] + torch.diag_embed(1.0 - sets)  # [B, S, M, M]
    rhs = -sets * linear[:, :, None, :]  # [B, N, S, M]
    x = refined_solve(system[:, None], rhs)
    tolerance = 1e-9 * (1.0 + x.abs().amax(dim=-1, keepdim=True))
    feasible = (x >= -tolerance).all(dim=-1)
    x = x.clamp_min(0.0)
    objective = 0.5 * ((x @ gram[:, None]) * x).sum(-1) + (linear[:, :, None, :] * x).sum(-1)
    return best_candidate(x, objective, feasible)


def simplex_min_norm(gram: Tensor) -> Tensor:
    """``argmin_{w >= 0, sum w = 1} w^T G w`` for ``G [B, M, M]``: ``[B, M]``."""
    (gram,) = normalized(gram)
    batch, tasks = gram.shape[:2]
    sets = supports(tasks, gram.device, gram.dtype)[1:]  # a point of the simplex needs support
    outer = sets[:, :, None] * sets[:, None, :]
    top = torch.cat(
        [
            outer * gram[:, None] + torch.diag_embed(1.0 - sets),
            sets[None, :, :, None].expand(batch, -1, -1, 1),
        ],
        dim=-1,
    )
    bottom = torch.cat([sets, torch.zeros_like(sets[:, :1])], dim=-1)[None].expand(batch, -1, -1)
    system = torch.cat([top, bottom[:, :, None, :]], dim=-2)  # [B, S, M + 1, M + 1]
    rhs = torch.zeros(tasks + 1, dtype=gram.dtype, device=gram.device)
    rhs[-1] = 1.0
    w = refined_solve(system, rhs.expand(*system.shape[:-1]))[..., :tasks]
    feasible = (w >= -1e-9).all(dim=-1) & ((w.sum(-1) - 1.0).abs() < 1e-9)
    w = w.clamp_min(0.0)
    w = w / w.sum(-1, keepdim=True).clamp_min(torch.finfo(gram.dtype).tiny)
    objective = ((w @ gram) * w).sum(-1)
    return best_candidate(w, objective, feasible)

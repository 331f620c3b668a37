"""``pcgrad``: project each gradient off the others it conflicts with (gradient surgery).

Yu, Kumar, Gupta, Levine, Hausman, Finn, "Gradient Surgery for Multi-Task Learning",
NeurIPS 2020 (arXiv:2001.06782), Algorithm 1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from harmonia.harmonization.methods.base import (
    Combination,
    OrderedMethod,
    gather_diag,
    gather_rows,
)


class PCGrad(OrderedMethod):
    """PCGrad per sample, tracked as coefficients using only the Gram matrix.

    For each task ``i``: ``g_i' = g_i``; for every other task ``j`` in a random order, if
    ``<g_i', g_j> < 0`` then ``g_i' -= <g_i', g_j> / |g_j|^2 g_j`` (always against the *original*
    ``g_j``, as in the paper). The result is ``sum_i g_i'``. Writing ``g_i' = sum_m c_m g_m`` makes
    ``<g_i', g_j> = (G c)_j`` and a projection an update of ``c_j`` alone. Orders are drawn per
    sample and per task (they only matter for three or more losses).

    Two per-sample gradients ``g1 = (1, 0)`` and ``g2 = (-1, 1)`` conflict (``<g1, g2> = -1``);
    from their Gram matrix the method returns the coefficients of ``2 g1 + 1.5 g2 = (0.5, 1.5)``, i.e. ``g1' + g2'`` with ``g1' = (0.5, 0.5)`` and ``g2' = (0, 1)``:

    >>> import torch
    >>> gram = torch.tensor([[[1.0, -1.0], [-1.0, 2.0]]], dtype=torch.float64)
    >>> PCGrad()(gram, torch.Generator()).coefficients
    tensor([[2.0000, 1.5000]], dtype=torch.float64)
    """

    name = "pcgrad"

    def combine_in_order(self, gram: Tensor, orders: Tensor) -> Combination:
        """PCGrad with given orders ``[B, M, M - 1]`` (task ``i`` visits ``orders[:, i]``)."""
        batch, tasks = gram.shape[:2]
        eye = torch.eye(tasks, dtype=gram.dtype, device=gram.device)
        total = torch.zeros(batch, tasks, dtype=gram.dtype, device=gram.device)
        projections = torch.zeros((), dtype=torch.long, device=gram.device)
        for i in range(tasks):
            coef = eye[i].expand(batch, tasks).clone()
            for step in range(tasks - 1):
                j = orders[:, i, step]
                inner = (gather_rows(gram, j) * coef).sum(-1)
                conflict = inner < 0
                shift = torch.where(conflict, inner / gather_diag(gram, j).clamp_min(self.eps), 0.0)
                coef.scatter_add_(1, j.view(-1, 1), -shift.view(-1, 1))
                projections += conflict.sum()
            total += coef
        return Combination(total, {"projections": projections})

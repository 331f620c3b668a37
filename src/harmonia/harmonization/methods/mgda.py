"""``mgda``: the minimum-norm point of the gradients' convex hull (a common descent direction).

Désidéri, "Multiple-gradient descent algorithm (MGDA) for multiobjective optimization",
Comptes Rendus Mathematique 2012; Sener, Koltun, "Multi-Task Learning as Multi-Objective
Optimization", NeurIPS 2018.
"""

from __future__ import annotations

import torch
from torch import Tensor

from harmonia.harmonization.methods.active_set import simplex_min_norm
from harmonia.harmonization.methods.base import Combination, Method

STATIONARY = 1e-12
"""A sample counts as Pareto-stationary when its min-norm point is this small (relative)."""


class MGDA(Method):
    """MGDA per sample, solved exactly (not by Frank-Wolfe) from the Gram matrix.

    ``w = argmin_{w in simplex} |sum_k w_k g_k|``; the direction decreases every loss of the
    sample (or is zero at a Pareto-stationary sample). Coefficients are ``M w`` so that ``M``
    identical gradients give their plain sum, keeping the step size comparable to ``none``.

    Two per-sample gradients ``g1 = (1, 0)`` and ``g2 = (-1, 1)`` conflict (``<g1, g2> = -1``);
    from their Gram matrix the method returns the coefficients of ``M`` times the min-norm point of the hull, ``2 * (0.6 g1 + 0.4 g2) = (0.4, 0.8)``:

    >>> import torch
    >>> gram = torch.tensor([[[1.0, -1.0], [-1.0, 2.0]]], dtype=torch.float64)
    >>> MGDA()(gram, torch.Generator()).coefficients
    tensor([[1.2000, 0.8000]], dtype=torch.float64)
    """

    name = "mgda"
    sums_without_conflict = False

    def combine(self, gram: Tensor, generator: torch.Generator) -> Combination:
        weights = simplex_min_norm(gram)
        tasks = gram.shape[-1]
        norm2 = torch.einsum("bk,bkl,bl->b", weights, gram, weights)
        scale = gram.diagonal(dim1=1, dim2=2).amax(dim=-1)
        stationary = (norm2 <= STATIONARY * scale).sum()
        return Combination(tasks * weights, {"stationary": stationary})

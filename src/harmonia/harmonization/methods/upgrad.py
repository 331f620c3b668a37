"""``upgrad``: project every gradient onto the dual cone of all of them, then add.

Quinton, Rey, "Jacobian Descent for Multi-Objective Optimization", 2024 (arXiv:2406.16232).
"""

from __future__ import annotations

import torch
from torch import Tensor

from harmonia.harmonization.methods.active_set import nonnegative_qp
from harmonia.harmonization.methods.base import Combination, Method


class UPGrad(Method):
    """UPGrad per sample, solved exactly from the Gram matrix.

    Each ``g_i`` is replaced by its projection onto the dual cone ``{v : <v, g_j> >= 0 for all j}``
    (the closest vector that conflicts with no loss), ``v_i = g_i + sum_j l_ij g_j`` where
    ``l_i = argmin_{l >= 0} (e_i + l)^T G (e_i + l)``; the result is ``sum_i v_i`` (the paper's
    preference vector set to ones, so that non-conflicting gradients give the plain sum). The
    result never conflicts with any loss of the sample.

    Two per-sample gradients ``g1 = (1, 0)`` and ``g2 = (-1, 1)`` conflict (``<g1, g2> = -1``);
    from their Gram matrix the method returns the coefficients of ``2 g1 + 1.5 g2``: each gradient projected onto the dual cone of both:

    >>> import torch
    >>> gram = torch.tensor([[[1.0, -1.0], [-1.0, 2.0]]], dtype=torch.float64)
    >>> UPGrad()(gram, torch.Generator()).coefficients
    tensor([[2.0000, 1.5000]], dtype=torch.float64)
    """

    name = "upgrad"

    def combine(self, gram: Tensor, generator: torch.Generator) -> Combination:
        lam = nonnegative_qp(gram, gram)  # program i has linear term G e_i = G[:, i]
        active = (lam > 0).any(dim=-1).sum()
        eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
        return Combination((eye + lam).sum(dim=1), {"projections": active})

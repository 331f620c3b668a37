"""``none``: measure the conflict but leave the gradients alone (the plain sum of the losses)."""

from __future__ import annotations

import torch
from torch import Tensor

from harmonia.harmonization.methods.base import Combination, Method


class NoSurgery(Method):
    """Every coefficient is 1, so the result is exactly the gradient of ``sum_k L_k``.

    The baseline: with it the Harmonizer only measures (cosines, norms, conflict scores) and the
    gradients equal ``sum(losses).backward()``.

    Two per-sample gradients ``g1 = (1, 0)`` and ``g2 = (-1, 1)`` conflict (``<g1, g2> = -1``);
    from their Gram matrix the method returns the coefficients of the plain sum ``g1 + g2``:

    >>> import torch
    >>> gram = torch.tensor([[[1.0, -1.0], [-1.0, 2.0]]], dtype=torch.float64)
    >>> NoSurgery()(gram, torch.Generator()).coefficients
    tensor([[1., 1.]], dtype=torch.float64)
    """

    name = "none"

    def combine(self, gram: Tensor, generator: torch.Generator) -> Combination:
        return Combination(torch.ones(gram.shape[:2], dtype=gram.dtype, device=gram.device), {})

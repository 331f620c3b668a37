"""``none``: measure the conflict but leave the gradients alone (the plain sum of the losses)."""

from __future__ import annotations

import torch
from torch import Tensor

from harmonia.harmonization.methods.base import Combination, Method


class NoSurgery(Method):
    """Every coefficient is 1, so the result is exactly the gradient of ``sum_k L_k``.

    The baseline: with it the Harmonizer only measures (cosines, norms, conflict scores) and the
    gradients equal ``sum(losses).backward()``.
    """

    name = "none"

    def combine(self, gram: Tensor, generator: torch.Generator) -> Combination:
        return Combination(torch.ones(gram.shape[:2], dtype=gram.dtype, device=gram.device), {})

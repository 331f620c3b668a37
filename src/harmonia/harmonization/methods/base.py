"""The contract every harmonization method follows: per-sample Gram matrices in, coefficients out.

For sample ``i`` and losses ``1..M`` a method sees only the Gram matrix
``G_i = [<g_ik, g_il>]_{k,l}`` of the losses' gradients (shape ``[B, M, M]`` for a batch) and
returns coefficients ``C`` of shape ``[B, M]`` such that the harmonized gradient of sample ``i`` is
``sum_k C_ik g_ik``. Because only inner products are needed, the same method serves every space
(embedding, exact parameters, whole batch): the space decides what ``g_ik`` is, the method decides
how to combine.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor


class Combination(NamedTuple):
    """What a method returns: coefficients ``[B, M]`` and a few counters for logging."""

    coefficients: Tensor
    info: dict[str, Tensor]
    """0-dim tensors (kept on the device, so no synchronization until someone logs them)."""


class Method(ABC):
    """A gradient-combination rule computed from per-sample Gram matrices.

    Subclasses set ``name`` (the string users pass to `Harmonizer`), implement `combine`, and, when
    they carry state across steps, override `state_dict` / `load_state_dict`. ``eps`` floors the
    denominators (squared norms, products of norms); the default 0 means "the smallest positive
    float64", so every method stays invariant to scaling the losses (a GradScaler's factor).
    """

    name: ClassVar[str]
    sums_without_conflict: ClassVar[bool] = True
    """Whether gradients that conflict nowhere (all inner products >= 0) are left as their plain
    sum (coefficients 1). MGDA is the exception: it always moves to the min-norm point."""

    def __init__(self, eps: float = 0.0) -> None:
        if not eps >= 0.0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.eps = max(eps, torch.finfo(torch.float64).tiny)

    def __call__(self, gram: Tensor, generator: torch.Generator) -> Combination:
        """Check the Gram batch and combine; ``generator`` drives any random order (CPU)."""
        if gram.dim() != 3 or gram.shape[1] != gram.shape[2]:
            raise ValueError(f"gram must have shape [B, M, M], got {tuple(gram.shape)}")
        return self.combine(gram.detach().double(), generator)

    @abstractmethod
    def combine(self, gram: Tensor, generator: torch.Generator) -> Combination:
        """Coefficients ``[B, M]`` (float64) for a float64 Gram batch ``[B, M, M]``."""

    def state_dict(self) -> dict[str, Any]:
        """State carried across steps (none by default)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        if state:
            raise ValueError(
                f"method {self.name!r} is stateless but got state keys {sorted(state)}"
            )


class OrderedMethod(Method):
    """A method that visits the other losses in a random order per sample and task (PCGrad,
    GradVac): `combine` draws the orders, `combine_in_order` does the work (and is what tests
    call with fixed orders)."""

    def combine(self, gram: Tensor, generator: torch.Generator) -> Combination:
        batch, tasks = gram.shape[:2]
        return self.combine_in_order(gram, random_orders(batch, tasks, generator, gram.device))

    @abstractmethod
    def combine_in_order(self, gram: Tensor, orders: Tensor) -> Combination:
        """Coefficients for given orders ``[B, M, M - 1]`` (task ``i`` visits ``orders[:, i]``)."""


def random_orders(
    batch: int, tasks: int, generator: torch.Generator, device: torch.device
) -> Tensor:
    """For each sample and task ``i``, a random order of the other tasks: ``[B, M, M - 1]`` (long).

    Drawn on the CPU from ``generator`` (so results do not depend on the device) and moved.
    """
    keys = torch.rand(batch, tasks, tasks, generator=generator, dtype=torch.float64)
    keys.diagonal(dim1=1, dim2=2).fill_(2.0)  # task i itself sorts last and is cut off
    return keys.argsort(dim=-1)[..., : tasks - 1].to(device)


def gather_rows(gram: Tensor, index: Tensor) -> Tensor:
    """Row ``index[b]`` of ``gram[b]`` for every sample: ``[B, M]``."""
    return gram.gather(1, index.view(-1, 1, 1).expand(-1, 1, gram.shape[-1])).squeeze(1)


def gather_diag(gram: Tensor, index: Tensor) -> Tensor:
    """Entry ``gram[b, index[b], index[b]]`` for every sample: ``[B]``."""
    return gram.diagonal(dim1=1, dim2=2).gather(1, index.view(-1, 1)).squeeze(1)

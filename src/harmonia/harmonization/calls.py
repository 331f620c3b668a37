"""What a recorded call of an anchor-path module holds, and which parameters it stands for."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.graph import GradientEdge

COMPOSITE: tuple[type[nn.Module], ...] = (nn.MultiheadAttention,)
"""Modules that use their children's parameters in their own forward: handled as one unit."""


@dataclass
class Call:
    """One call of a parameter-owning module during the captured forward."""

    module: nn.Module
    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    outputs: list[Tensor]
    """The call's tensor outputs that require grad (detached; kept only where `Capture` was told
    to keep them, since holding every output would raise peak memory); else their shapes only."""
    shapes: list[torch.Size]
    positions: list[int]
    """Where ``outputs`` sit among the flattened leaves of the call's return value (for a
    recorded attention: which of its projections each edge is, `attention.PROJECTIONS`)."""
    edges: list[GradientEdge]
    """Gradient edges of ``outputs`` at call time (for broadcast parameters: of ``uses``)."""
    uses: list[Any] = field(default_factory=list)
    """`broadcast.Use` per edge, where the call's own parameters are broadcast over the batch."""


def unit_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    """The trainable parameters a recorded module is responsible for."""
    recurse = isinstance(module, COMPOSITE)
    return {n: p for n, p in module.named_parameters(recurse=recurse) if p.requires_grad}

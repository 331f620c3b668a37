"""Gathering embeddings across processes with gradient, for negatives from the whole global batch.

A gather function takes a rank's local tensor [b, ...] and returns every rank's rows
concatenated in rank order, plus where this rank's rows start (`Gathered`). Losses then score
their local samples against all gathered ones (open_clip's ``local_loss`` scheme), so each
process computes the loss only of its own samples and the global batch still supplies negatives.
`local_gather` (the default) is the single-process identity.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor


class Gathered(NamedTuple):
    """All ranks' rows [N, ...] and the index of this rank's first row in them."""

    tensor: Tensor
    start: int


Gather = Callable[[Tensor], Gathered]
"""Signature of a gather function (`local_gather`, `gather_with_grad`, or your own)."""


def local_gather(x: Tensor) -> Gathered:
    """Single process: the local batch is the global batch."""
    return Gathered(x, 0)


def gather_with_grad(x: Tensor, group: Any = None) -> Gathered:
    """All-gather ``x`` along dim 0 over ``group`` (default: the world), keeping the gradient.

    Ranks may hold different numbers of rows (the last batch); other dims must agree. In
    backward each rank receives the sum over ranks of the gradient w.r.t. its rows, which is
    what a global loss summed over ranks' local losses needs (DDP then averages parameters).
    With no initialized process group this is `local_gather`.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return local_gather(x)
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    shape = torch.tensor(list(x.shape), dtype=torch.long)
    shapes = [torch.empty_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape, group=group)
    for r, s in enumerate(shapes):
        if s[1:].tolist() != list(x.shape[1:]):
            raise ValueError(
                f"gather_with_grad: rank {r} has rows of shape {s[1:].tolist()}, "
                f"rank {rank} has {list(x.shape[1:])}"
            )
    sizes = [int(s[0]) for s in shapes]
    out = _AllGather.apply(x, sizes, rank, group)
    return Gathered(out, sum(sizes[:rank]))


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, sizes: list[int], rank: int, group: Any) -> Tensor:
        ctx.sizes, ctx.rank, ctx.group = sizes, rank, group
        longest = max(sizes)
        padded = x.new_zeros((longest, *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous(), group=group)
        return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)], dim=0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None, None]:
        total = grad.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
        start = sum(ctx.sizes[: ctx.rank])
        return total[start : start + ctx.sizes[ctx.rank]], None, None, None

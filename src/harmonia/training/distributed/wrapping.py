"""Model wrapping for data-parallel training: DDP or FSDP2, and what works with which.

Per-sample harmonization stays exact under DDP. Each rank computes the loss of its own samples
against the negatives of every rank (`DistributedContext.gather`, the open_clip local-loss +
gather-with-grad scheme); the gather's backward sums over ranks the gradient with respect to a
rank's rows, so the gradient reaching rank r's embeddings is that of the sum of all ranks'
local losses. The Harmonizer's probing passes are ``torch.autograd.grad`` calls: they never run
the parameters' gradient accumulators, which is where DDP's reducer hooks sit, so the only
all-reduce of parameter gradients is the one triggered by the Harmonizer's final backward (once
per step, like ``loss.backward()``). DDP then averages over ranks, and with equal local batches
the mean over ranks of the local means is the mean over the global batch: one step on W x B
samples with W processes equals one step on W*B samples with one process (tested).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from harmonia.errors import ConfigError
from harmonia.training.distributed.context import DistributedContext

Strategy = Literal["none", "ddp", "fsdp"]
STRATEGIES: tuple[str, ...] = ("none", "ddp", "fsdp")


def wrap_model(model: nn.Module, ctx: DistributedContext, strategy: str = "ddp") -> nn.Module:
    """Wrap ``model`` (already on ``ctx.device``) for data-parallel training.

    ``ddp``: DistributedDataParallel (default; gradients all-reduced once per backward).
    ``fsdp``: FSDP2 ``fully_shard`` on each item of every ``nn.ModuleList`` (the transformer
    blocks) and on the root; parameters become sharded DTensors (see docs/distributed.md for
    what the Harmonizer supports under FSDP2, and `check_supported`). ``none`` (or a single
    process) returns ``model`` unchanged.
    """
    _check_strategy(strategy)
    if strategy == "none" or not ctx.is_distributed:
        return model
    if strategy == "ddp":
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, process_group=ctx.group)
    from torch.distributed.fsdp import fully_shard

    blocks = {
        id(child)
        for module in model.modules()
        if isinstance(module, nn.ModuleList)
        for child in module
    }
    for module in [m for m in model.modules() if id(m) in blocks]:
        fully_shard(module)
    fully_shard(model)  # turns model into an FSDPModule in place
    return model


def check_supported(strategy: str, space: str) -> None:
    """Refuse a strategy / harmonization space pair that would fail or be inexact (ConfigError).

    Under FSDP2 the layers' weights are sharded once the forward is done: space ``batch``
    differentiates with respect to them and is refused; space ``parameters`` is exact: the
    native Gram rules need only a layer's inputs and output gradients, and the ``torch.func``
    fallback (convs, GroupNorm) gathers a sharded layer's full weights itself (a collective,
    in the same order on every rank).
    """
    _check_strategy(strategy)
    if strategy == "fsdp" and space == "batch":
        raise ConfigError(
            "distributed strategy fsdp cannot harmonize in space 'batch' (it differentiates "
            "with respect to the encoder's weights, which FSDP shards); use embedding or "
            "parameters, or strategy ddp"
        )


def _check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ConfigError(
            f"distributed strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}"
        )


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside a DDP wrapper (FSDP2 modifies the module in place)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def clip_gradients(parameters: Iterable[nn.Parameter], max_norm: float) -> float:
    """``clip_grad_norm_`` over the whole model on every rank; returns the total norm.

    Call it after the gradients are reduced: under DDP every rank holds the same gradients;
    under FSDP2 the norm of the sharded gradients is reduced across ranks (plain parameters,
    e.g. the objective's temperatures, may be mixed in).
    """
    norm = torch.nn.utils.clip_grad_norm_(list(parameters), max_norm)
    full_tensor = getattr(norm, "full_tensor", None)
    return float(full_tensor() if callable(full_tensor) else norm)


def is_sharded(model: nn.Module) -> bool:
    """True if FSDP2 manages ``model`` or one of its submodules."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())

"""The three spaces in which the per-sample gradients ``g_ik`` are taken, as Gram batches.

All start from ``U [M, B, ...]``, the gradients of each loss with respect to the anchor
(``u_ik`` = row ``i`` of ``dL_k/dZ``), and return ``[B, M, M]`` (``[1, M, M]`` for ``batch``):

- ``embedding``: ``g_ik = u_ik``.
- ``parameters``: ``g_ik = J_i^T u_ik`` over the anchor encoder's parameters, exactly, from the
  captured calls: ``M`` backward passes from the anchor to the captured layer outputs (no weight
  gradients are formed), then per-layer Gram rules (`layer_grams`).
- ``batch``: ``g_k = J^T U_k`` for the whole batch (classic multi-task surgery), from ``M``
  backward passes to the encoder's parameters.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch import Tensor, nn

from harmonia.harmonization.calls import Call, unit_parameters
from harmonia.harmonization.layer_grams import Kept, Traced
from harmonia.harmonization.rules import module_gram

SPACES: tuple[str, ...] = ("embedding", "parameters", "batch")


def compute_dtype(t: Tensor) -> torch.dtype:
    """Grams are accumulated in float64 for float64 models and float32 otherwise."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def embedding_gram(grads: Tensor) -> Tensor:
    """``[M, B, ...] -> [B, M, M]`` with ``g_ik = u_ik``."""
    flat = grads.reshape(grads.shape[0], grads.shape[1], -1).to(compute_dtype(grads))
    return torch.einsum("kbf,lbf->bkl", flat, flat)


def batch_gram(anchor: Tensor, grads: Tensor, encoder: nn.Module) -> Tensor:
    """``[1, M, M]``: Gram of the whole-batch gradients ``J^T U_k`` over ``encoder``'s parameters."""
    params = [p for p in encoder.parameters() if p.requires_grad]
    if not params:
        raise ValueError("space='batch': the encoder has no trainable parameters")
    rows = []
    for u in grads:
        parts = torch.autograd.grad(anchor, params, u, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (g if g is not None else torch.zeros_like(p)).reshape(-1).to(compute_dtype(u))
                    for g, p in zip(parts, params, strict=True)
                ]
            )
        )
    flat = torch.stack(rows)
    return (flat @ flat.T)[None]


def parameter_gram(
    anchor: Tensor, grads: Tensor, calls: list[Call]
) -> tuple[Tensor, list[Traced], Kept]:
    """``[B, M, M]``: exact per-sample Grams over the parameters of the captured modules, the
    traced calls they were formed from (with the per-loss gradients at their outputs, released
    where kept per-sample gradients replace them), and the per-sample gradients the rules
    materialized on the way (`Kept`)."""
    tasks, batch = grads.shape[:2]
    traced = trace(anchor, grads, calls)
    if not traced:
        raise ValueError(
            "space='parameters': the anchor depends on none of the captured modules; capture the "
            "encoder that produces the anchor (`with harmonizer.capture(encoder): ...`)"
        )
    by_module: dict[int, list[Traced]] = defaultdict(list)
    for t in traced:
        by_module[id(t.call.module)].append(t)
    dtype = compute_dtype(grads)
    gram = torch.zeros(batch, tasks, tasks, dtype=dtype, device=grads.device)
    kept = Kept()
    for group in by_module.values():
        module = group[0].call.module
        gram = gram + released_gram(module, group, dtype, kept).to(dtype)
    return gram, traced, kept


def released_gram(module: nn.Module, group: list[Traced], dtype: torch.dtype, kept: Kept) -> Tensor:
    """`module_gram` of one module's calls; where its per-sample gradients were kept, its output
    gradients are released at once (the kept ones are all the realignment needs)."""
    gram = module_gram(module, group, dtype, kept)
    if module in kept.by_module:
        for t in group:
            t.release()
    return gram


def trace(anchor: Tensor, grads: Tensor, calls: list[Call]) -> list[Traced]:
    """Gradients of every loss at the captured outputs; only calls on the anchor path are kept."""
    batch = grads.shape[1]
    edges = [edge for call in calls for edge in call.edges]
    if not edges:
        return []
    # One backward per loss (a loop beats is_grads_batched: attention has no batching rule).
    per_loss = [
        torch.autograd.grad(anchor, edges, u, retain_graph=True, allow_unused=True) for u in grads
    ]
    found = [
        None if parts[0] is None else list(parts)  # type: ignore[arg-type]
        for parts in zip(*per_loss, strict=True)
    ]
    traced = []
    position = 0
    for call in calls:
        mine = found[position : position + len(call.edges)]
        position += len(call.edges)
        if all(g is None for g in mine):
            continue
        for g, shape in zip(mine, call.shapes, strict=True):
            if g is not None and (len(shape) == 0 or shape[0] != batch):
                raise ValueError(
                    f"{call.name} ({type(call.module).__name__}) is on the anchor path with an "
                    f"output of shape {tuple(shape)}, but the batch has {batch} samples; "
                    "parameters space needs the batch first in every layer's output"
                )
        traced.append(Traced(call, list(mine)))
    return traced


def verify_per_sample(anchor: Tensor, calls: list[Call], encoder: nn.Module) -> None:
    """One probe backward: samples must not mix, and captured modules must cover every parameter.

    The probe sends a random gradient from the anchor of sample 0 only. If any captured layer
    output receives gradient at another sample, something on the anchor path mixes samples (a
    batch-wise operation); if a parameter receives gradient but none of the captured calls owns
    it, it is used outside its module's forward (e.g. tied weights) and its per-sample gradient
    would be missed.
    """
    batch = anchor.shape[0]
    generator = torch.Generator(anchor.device).manual_seed(0)  # leaves the global RNG alone
    probe = torch.zeros_like(anchor)
    probe[0] = torch.randn(anchor.shape[1:], generator=generator, device=anchor.device).to(
        anchor.dtype
    )
    edges = [edge for call in calls for edge in call.edges]
    named = [(n, p) for n, p in encoder.named_parameters() if p.requires_grad]
    inputs: list[Any] = [*edges, *(p for _, p in named)]
    found = torch.autograd.grad(anchor, inputs, probe, retain_graph=True, allow_unused=True)
    position = 0
    last_leak = None
    owned: set[int] = set()
    for call in calls:
        mine = found[position : position + len(call.edges)]
        position += len(call.edges)
        if all(g is None for g in mine):
            continue
        owned.update(id(p) for p in unit_parameters(call.module).values())
        if batch > 1 and any(g is not None and bool((g[1:].abs() > 0).any()) for g in mine):
            last_leak = call
    if last_leak is not None:
        raise ValueError(
            f"the anchor path mixes samples after {last_leak.name} "
            f"({type(last_leak.module).__name__}): a gradient sent from one sample's anchor "
            "reaches other samples there, so per-sample parameter gradients are not defined "
            "(batch statistics, batch-wise normalization or pooling over the batch); use "
            "space='embedding' or 'batch'"
        )
    for (name, p), g in zip(named, found[len(edges) :], strict=True):
        if g is not None and id(p) not in owned and bool((g.abs() > 0).any()):
            raise ValueError(
                f"parameter {name!r} receives gradient from the anchor, but no captured module "
                "call on the anchor path owns it (it is used outside its module's forward, e.g. "
                "tied weights); parameters space cannot attribute its per-sample gradient"
            )

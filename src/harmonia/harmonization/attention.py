"""``nn.MultiheadAttention`` on the anchor path: a recorded forward and its exact Gram rule.

The module's own forward is one fused call, so hooks see only its inputs and its output and the
per-sample gradients of its projection weights would need torch.func (re-running attention once
per sample). While a `Capture` is active a covered MultiheadAttention runs the same computation
written out of its parts instead: the query, key and value projections, scaled dot-product
attention and the output projection (`attend`). Each projection is a linear layer whose input and
output edge are recorded, so `attention_gram` sums four `linear_weight_gram` terms; the weight
blocks are disjoint parameters, so their Grams add. Self-attention with one ``in_proj_weight``
projects query, key and value in one product and records that (``packed``), as the module's own
forward does: its gradient arrives as one ``[B, L, 3E]`` tensor and needs no joining. Attention
dropout needs no replay here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeGuard

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.graph import get_gradient_edge

from harmonia.harmonization.calls import Call
from harmonia.harmonization.layer_grams import Traced, _cat, flat_gram, linear_weight_gram

PROJECTIONS: tuple[str, ...] = ("query", "key", "value", "output", "packed")
"""The linear maps of a recorded call; its ``args`` are their inputs, in this order. ``packed``
is query, key and value in one product of the whole ``in_proj_weight`` (self-attention)."""
PACKED = PROJECTIONS.index("packed")


def covered(module: nn.Module) -> TypeGuard[nn.MultiheadAttention]:
    """A MultiheadAttention that `attend` reproduces: batch first, no bias_k/v, no zero attention."""
    return (
        isinstance(module, nn.MultiheadAttention)
        and type(module).forward is nn.MultiheadAttention.forward
        and module.batch_first
        and module.bias_k is None
        and not module.add_zero_attn
    )


def _weights(module: nn.MultiheadAttention) -> list[tuple[Tensor, Tensor | None]]:
    """(weight, bias) of each of `PROJECTIONS`."""
    if module._qkv_same_embed_dim:
        assert module.in_proj_weight is not None
        weights = list(module.in_proj_weight.chunk(3))
    else:
        weights = [module.q_proj_weight, module.k_proj_weight, module.v_proj_weight]
    bias = module.in_proj_bias
    biases: list[Tensor | None] = [None] * 3 if bias is None else list(bias.chunk(3))
    return [*zip(weights, biases, strict=True), (module.out_proj.weight, module.out_proj.bias)]


def projection_parameters(
    module: nn.MultiheadAttention,
) -> list[tuple[Tensor | None, Tensor | None]]:
    """The trainable parameter behind each projection's weight and bias (None: frozen or absent)."""

    def trainable(p: Tensor | None) -> Tensor | None:
        return p if p is not None and p.requires_grad else None

    if module._qkv_same_embed_dim:
        inner: list[Tensor | None] = [module.in_proj_weight] * 3
    else:
        inner = [module.q_proj_weight, module.k_proj_weight, module.v_proj_weight]
    out = module.out_proj
    pairs = [
        *((w, module.in_proj_bias) for w in inner),
        (out.weight, out.bias),
        (module.in_proj_weight, module.in_proj_bias),
    ]
    return [(trainable(w), trainable(b)) for w, b in pairs]


def packs(module: nn.MultiheadAttention, query: Tensor, key: Tensor, value: Tensor) -> bool:
    """Whether `attend` projects query, key and value in one product (``packed``)."""
    return module._qkv_same_embed_dim and query is key is value


def _additive_mask(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """A boolean mask (True: not attended) as an additive float mask, as MultiheadAttention does."""
    if mask is None or mask.is_floating_point():
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, -math.inf)


def attend(module: nn.MultiheadAttention, name: str, record: Callable[[Call], None]) -> Any:
    """A forward for ``module`` equal to its own, that records its four projections."""

    def forward(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        if query.dim() != 3:
            raise ValueError(
                f"{name}: unbatched input to nn.MultiheadAttention has no batch to separate; "
                "parameters space needs [batch, sequence, features]"
            )
        if is_causal and attn_mask is None:
            raise RuntimeError(f"{name}: is_causal needs attn_mask (as nn.MultiheadAttention)")
        (wq, bq), (wk, bk), (wv, bv), (wo, bo) = _weights(module)
        packed = None
        if packs(module, query, key, value):
            assert module.in_proj_weight is not None
            packed = F.linear(query, module.in_proj_weight, module.in_proj_bias)
            q, k, v = packed.chunk(3, -1)
        else:
            q, k, v = F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)
        batch, length, width = q.shape
        heads, sources = module.num_heads, k.shape[1]

        def split(x: Tensor, steps: int) -> Tensor:
            return x.view(batch, steps, heads, module.head_dim).transpose(1, 2)

        qh, kh, vh = split(q, length), split(k, sources), split(v, sources)
        mask = _additive_mask(attn_mask, q.dtype)
        if mask is not None and mask.dim() == 3:  # [batch * heads, L, S]
            mask = mask.view(batch, heads, length, sources)
        padding = _additive_mask(key_padding_mask, q.dtype)
        if padding is not None:
            padding = padding.view(batch, 1, 1, sources)
            mask = padding if mask is None else mask + padding
        dropout = module.dropout if module.training else 0.0
        weights = None
        if need_weights:
            scores = (qh * (1.0 / module.head_dim) ** 0.5) @ kh.transpose(-2, -1)
            weights = torch.softmax(scores if mask is None else scores + mask, dim=-1)
            if dropout > 0.0:
                weights = F.dropout(weights, p=dropout)
            context = weights @ vh
        else:
            context = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, dropout_p=dropout)
        context = context.transpose(1, 2).reshape(batch, length, width)
        out = F.linear(context, wo, bo)
        produced: list[Tensor | None] = [q, k, v, out, None]
        if packed is not None:
            produced = [None, None, None, out, packed]
        positions = [j for j, t in enumerate(produced) if t is not None and t.requires_grad]
        if positions:
            record(
                Call(
                    module,
                    name,
                    (query, key, value, context, query),
                    {},
                    [],
                    [produced[j].shape for j in positions],  # type: ignore[union-attr]
                    positions,
                    [get_gradient_edge(produced[j]) for j in positions],  # type: ignore[arg-type]
                )
            )
        if weights is not None and average_attn_weights:
            weights = weights.mean(1)
        return out, weights

    return forward


def attention_gram(module: nn.Module, traced: list[Traced], dtype: torch.dtype) -> Tensor:
    """Linear layers: rows are each projection's inputs, over all calls (cross terms kept).

    Where every call on the path is packed, ``in_proj_weight`` is one ``[3E, E]`` layer; where
    packed and separate calls mix, a packed gradient is split into its three blocks.
    """
    assert isinstance(module, nn.MultiheadAttention)
    on_path = next(g for g in traced[0].grads if g is not None)
    tasks, batch = len(on_path), on_path[0].shape[0]
    projections = projection_parameters(module)
    whole = all(PACKED in t.call.positions for t in traced)
    inputs: list[list[Tensor]] = [[] for _ in PROJECTIONS]
    grads: list[list[list[Tensor]]] = [[[] for _ in range(tasks)] for _ in PROJECTIONS]
    for t in traced:
        for j, g in zip(t.call.positions, t.grads, strict=True):
            if g is None:
                continue
            rows = t.call.args[j].reshape(batch, -1, t.call.args[j].shape[-1])
            if j == PACKED and not whole:
                for block in range(3):
                    inputs[block].append(rows)
                    for k in range(tasks):
                        grads[block][k].append(
                            g[k].chunk(3, -1)[block].reshape(*rows.shape[:2], -1)
                        )
                continue
            inputs[j].append(rows)
            for k in range(tasks):
                grads[j][k].append(g[k].reshape(batch, -1, g[k].shape[-1]))
    gram = torch.zeros(batch, tasks, tasks, dtype=dtype, device=on_path[0].device)
    for j, (weight, bias) in enumerate(projections):
        if not inputs[j] or (weight is None and bias is None):
            continue
        d = [_cat(parts, 1).to(dtype) for parts in grads[j]]
        if weight is not None:
            gram = gram + linear_weight_gram(_cat(inputs[j], 1).to(dtype), d)
        if bias is not None:  # the blocks of in_proj_bias are disjoint entries: their Grams add
            gram = gram + flat_gram([dk.sum(1) for dk in d])
    return gram

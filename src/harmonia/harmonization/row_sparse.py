"""The anchor encoder's backward, skipping rows that carry no gradient (parameters space).

Only some rows of a layer's output reach the anchor. In an encoder pooled by an aggregation
token, the last block's feed-forward layers, output projection and attention queries matter only
at that token's row; autograd's own formulas still multiply every row, zeros included, once per
loss in the M passes of `spaces.trace`. While a `Capture` records, `RowSparse` is active inside
the encoder's forward: its ``F.linear`` and ``F.scaled_dot_product_attention`` calls compute the
same outputs, and their backward finds the rows whose output gradient is not all zero and
multiplies only those when they are few. Dense gradients take the dense route (attention: the
built-in kernel), so nothing is slower where every row is live. CPU only: on an accelerator the
row count would cost a host synchronization per layer. Autocast, attention dropout and grouped
query attention take the built-in route unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.graph import get_gradient_edge
from torch.overrides import TorchFunctionMode
from torch.utils.hooks import RemovableHandle

LINEAR_SPARSE = 0.5
"""A linear layer's input gradient skips dead rows when at most this share of rows is live."""
ATTENTION_SPARSE = 0.25
"""Attention recomputes the live queries itself when at most this share of them is live."""


def _will_run(edge: Any) -> bool:
    """Whether this backward reaches ``edge`` (a pass to layer outputs needs no weight gradient).

    The engine answers for non-leaf nodes only, so `linear` hands its parameters in as views.
    """
    if edge is None:
        return False
    try:
        return True if _WILL_EXECUTE is None else bool(_WILL_EXECUTE(edge.node))
    except RuntimeError:  # a leaf during autograd.grad: assume it is wanted
        return True


_WILL_EXECUTE = getattr(torch._C, "_will_engine_execute_node", None)
"""The engine's answer to `_will_run` (absent from some torch releases: every gradient formed)."""


def _edge(t: Tensor | None) -> Any:
    return get_gradient_edge(t) if t is not None and t.requires_grad else None


def nonzero(t: Tensor, dims: int | tuple[int, ...]) -> Tensor:
    """True where ``t`` holds an entry other than zero (or a NaN) along ``dims``.

    Two reductions and no temporary the size of ``t`` (an ``abs`` or ``ne`` copy of a layer's
    gradient costs more than the reductions).
    """
    return t.amax(dims).ne(0) | t.amin(dims).ne(0)


def _live(rows: Tensor) -> Tensor | None:
    """Indices of the rows of ``rows [N, F]`` with any nonzero entry; None when most are live.

    Every eighth row is looked at first, so a dense gradient costs an eighth of a full scan.
    """
    share = LINEAR_SPARSE * rows.shape[0]
    if nonzero(rows[::8], 1).sum() > share / 8:
        return None
    live = nonzero(rows, 1).nonzero().squeeze(1)
    return live if live.numel() <= share else None


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.edges = (_edge(x), _edge(weight), _edge(bias))
        ctx.set_materialize_grads(False)  # no gradient in, none out (and no zeros downstream)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: Tensor | None) -> tuple[Tensor | None, ...]:
        if grad is None:
            return None, None, None
        x, weight = ctx.saved_tensors
        wanted = [_will_run(e) for e in ctx.edges]
        rows = grad.reshape(-1, grad.shape[-1])
        live = _live(rows)
        if live is not None:
            rows = rows[live]
        dx = dw = db = None
        if wanted[0]:
            part = rows @ weight.to(rows.dtype)
            if live is None:
                dx = part.reshape(x.shape)
            else:
                dx = part.new_zeros(x.numel() // x.shape[-1], x.shape[-1])
                dx = dx.index_copy_(0, live, part).reshape(x.shape)
            dx = dx.to(x.dtype)
        if wanted[1]:  # x's rows are gathered only here: a pass to layer outputs needs none
            inputs = x.reshape(-1, x.shape[-1])
            inputs = inputs if live is None else inputs[live]
            dw = (rows.T @ inputs.to(rows.dtype)).to(weight.dtype)
        if wanted[2]:
            db = rows.sum(0)
        return dx, dw, db


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear`` whose backward skips dead output rows (`_Linear`) where that is safe."""
    if not _routed(x, weight, bias) or x.dim() < 2:
        return F.linear(x, weight, bias)
    views = [None if p is None else p.view_as(p) for p in (weight, bias)]
    return _Linear.apply(x, *views)  # type: ignore[no-any-return]


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None,
        causal: bool,
        scale: float | None,
    ) -> Tensor:
        # The built-in kernel runs on detached leaves so its own backward serves dense gradients.
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(t.requires_grad) for t in (q, k, v)]
            lq, lk, lv = leaves
            out = F.scaled_dot_product_attention(
                lq, lk, lv, attn_mask=mask, is_causal=causal, scale=scale
            )
        ctx.inner = (out, leaves)
        ctx.save_for_backward(q, k, v, mask)
        ctx.causal, ctx.scale = causal, scale
        ctx.set_materialize_grads(False)
        return out.detach()

    @staticmethod
    def backward(ctx: Any, grad: Tensor | None) -> tuple[Tensor | None, ...]:
        if grad is None:
            return (None,) * 6
        out, leaves = ctx.inner
        q, k, v, mask = ctx.saved_tensors
        length = q.shape[-2]
        share = ATTENTION_SPARSE * length
        first = grad[(0,) * (grad.dim() - 2)]  # one [L, D] slice first: dense gradients stop here
        live = None
        if nonzero(first, 1).sum() <= share:
            others = tuple(i for i in range(grad.dim()) if i != grad.dim() - 2)
            live = nonzero(grad, others).nonzero().squeeze(1)
        if live is None or live.numel() > share:
            wanted = [t for t in leaves if t.requires_grad]
            dense = iter(
                torch.autograd.grad(
                    out, wanted, grad, retain_graph=True, create_graph=torch.is_grad_enabled()
                )
            )
            return (*(next(dense) if t.requires_grad else None for t in leaves), None, None, None)
        found = _live_queries((q, k, v), (mask, ctx.causal, ctx.scale), grad, live)
        kept = (g if need else None for g, need in zip(found, ctx.needs_input_grad, strict=False))
        return (*kept, None, None, None)


Masking = tuple[Tensor | None, bool, float | None]
"""An attention call's mask, causality and scale."""


def _live_queries(
    qkv: tuple[Tensor, Tensor, Tensor], masking: Masking, grad: Tensor, live: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Attention's input gradients when only the queries at ``live`` receive gradient."""
    q, k, v = qkv
    mask, causal, scale = masking
    dtype = torch.promote_types(q.dtype, torch.float32)
    factor = q.shape[-1] ** -0.5 if scale is None else scale
    q_live, d_out = q[..., live, :].to(dtype), grad[..., live, :].to(dtype)
    kf, vf = k.to(dtype), v.to(dtype)
    scores = (q_live @ kf.transpose(-2, -1)) * factor
    if causal:
        keys = torch.arange(k.shape[-2], device=q.device)
        scores = scores.masked_fill(keys > live[:, None], -torch.inf)
    if mask is not None:
        rows = mask.expand(*scores.shape[:-2], q.shape[-2], k.shape[-2])[..., live, :]
        scores = (
            scores.masked_fill(~rows, -torch.inf) if rows.dtype == torch.bool else scores + rows
        )
    p = torch.softmax(scores, -1)
    dv = p.transpose(-2, -1) @ d_out
    dp = d_out @ vf.transpose(-2, -1)
    ds = p * (dp - (dp * p).sum(-1, keepdim=True)) * factor
    dq = _zeros_laid_out_as(q)
    dq[..., live, :] = (ds @ kf).to(q.dtype)
    dk = _laid_out_as(k, ds.transpose(-2, -1) @ q_live)
    return dq, dk, _laid_out_as(v, dv)


def _zeros_laid_out_as(t: Tensor) -> Tensor:
    """Zeros of ``t``'s shape and dtype whose strides keep ``t``'s order of dimensions (a gradient
    laid out as its input: the heads of ``[B, L, H, D]`` viewed as ``[B, H, L, D]`` stay put, so
    the backward of that view copies nothing)."""
    strides = t.stride()
    order = sorted(range(t.dim()), key=lambda i: -strides[i])
    base = t.new_zeros([t.shape[i] for i in order])
    return base.permute([order.index(i) for i in range(t.dim())])


def _laid_out_as(t: Tensor, value: Tensor) -> Tensor:
    """``value`` (``t``'s shape) cast to ``t``'s dtype, laid out as `_zeros_laid_out_as` does."""
    out = _zeros_laid_out_as(t)
    out.copy_(value)
    return out


def attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """``F.scaled_dot_product_attention`` whose backward recomputes only the live queries."""
    plain = (
        not _routed(query, key, value)
        or dropout_p > 0.0
        or enable_gqa
        or query.dim() < 3
        or (attn_mask is not None and attn_mask.requires_grad)
        or (is_causal and attn_mask is not None)
    )
    if plain:
        return F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attn_mask,
            dropout_p=dropout_p,
            is_causal=is_causal,
            scale=scale,
            enable_gqa=enable_gqa,
        )
    return _Attention.apply(query, key, value, attn_mask, is_causal, scale)  # type: ignore[no-any-return]


def _routed(*tensors: Tensor | None) -> bool:
    present = [t for t in tensors if t is not None]
    return (
        torch.is_grad_enabled()
        and any(t.requires_grad for t in present)
        and all(t.device.type == "cpu" for t in present)
        and not torch.is_autocast_enabled("cpu")
    )


_ROUTES: dict[Callable[..., Any], Callable[..., Any]] = {
    F.linear: linear,
    F.scaled_dot_product_attention: attention,
}


class RowSparse(TorchFunctionMode):
    """Routes ``F.linear`` and ``F.scaled_dot_product_attention`` to their live-row versions."""

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        route = _ROUTES.get(func, func)
        return route(*args, **(kwargs or {}))


def inside(encoder: nn.Module) -> list[RemovableHandle]:
    """Hooks that keep `RowSparse` active during each outermost call of ``encoder`` (none for an
    encoder off the CPU, where nothing would be routed)."""
    if any(p.device.type != "cpu" for p in encoder.parameters()):
        return []
    mode = RowSparse()
    depth = [0]

    def enter(module: nn.Module, args: Any) -> None:
        depth[0] += 1
        if depth[0] == 1:
            mode.__enter__()

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        depth[0] -= 1
        if depth[0] == 0:
            mode.__exit__(None, None, None)

    return [
        encoder.register_forward_pre_hook(enter),
        encoder.register_forward_hook(leave, always_call=True),
    ]

"""The anchor encoder's realigned gradient, formed from the per-loss passes (parameters space).

The Harmonizer sends ``sum_k c_ik u_ik`` into sample ``i``'s anchor (``c_ik``: the method's
coefficient times the curriculum weight). Backward is linear and the anchor path keeps samples
apart, so the gradient this produces at a captured layer output is ``D = sum_k c_ik d_ik``, with
``d_ik`` the per-loss gradients the Gram already needed. Each layer's parameter gradient then
follows from ``D`` and the layer's captured input (``D^T a`` for a linear layer, a weight-
gradient convolution, ``sum xhat D`` for a norm, ...), so the final backward can skip the anchor
encoder instead of recomputing those activation gradients. Where a Gram rule already formed the
per-sample gradients ``g_ik`` (convolutions, norms, the torch.func fallback: `Kept`), the
gradient is ``sum_ik c_ik g_ik`` and ``D`` is not formed at all. `encoder_gradients` returns
None when some module is covered by neither; the Harmonizer then runs the full backward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from harmonia.harmonization import attention, broadcast
from harmonia.harmonization.conv_grams import _CONV_WEIGHT_GRAD, covered_conv, padded
from harmonia.harmonization.layer_grams import (
    Kept,
    Traced,
    _forward_is,
    _input,
    normalized_rows,
    rows_with_gradient,
)
from harmonia.harmonization.rules import NORMS
from harmonia.harmonization.spaces import compute_dtype

Gradients = dict[Tensor, Tensor]


def encoder_gradients(traced: list[Traced], kept: Kept, scale: Tensor) -> Gradients | None:
    """Each captured module's parameter gradient under the realigned anchor gradient.

    ``scale [B, M]`` holds the per-sample coefficients ``c_ik``; ``kept`` the per-sample
    gradients the Gram rules materialized. None where a module on the anchor path is in
    neither ``kept`` nor covered by a rule here.
    """
    found: Gradients = {}
    for grads in kept.by_module.values():
        for p, g in grads.items():
            total = torch.einsum("bk,bk...->...", scale.to(g.dtype), g)
            found[p] = found[p] + total if p in found else total
    for t in traced:
        if t.call.module in kept.by_module:
            continue
        rule = _rule_for(t.call.module, t)
        if rule is None:
            return None
        for p, g in rule(t.call.module, t, scale):
            found[p] = found[p] + g if p in found else g
    return found


def backward_without_encoder(
    losses: Sequence[Tensor], anchor: Tensor, found: Gradients, retain_graph: bool = False
) -> None:
    """One backward of ``sum_k L_k`` that leaves the anchor's encoder out and adds ``found``.

    The anchor's incoming gradient is made undefined (a prehook on its node), so nothing flows
    into the encoder's anchor call; a surrogate ``sum <p, g_p>`` in the same backward accumulates
    each ``g_p`` into ``p.grad``, so hooks such as DDP's fire once per parameter as usual.
    """
    assert anchor.grad_fn is not None
    slot = anchor.output_nr

    def skip_encoder(outer: tuple[Tensor | None, ...]) -> tuple[Tensor | None, ...]:
        return tuple(None if i == slot else g for i, g in enumerate(outer))

    handle = anchor.grad_fn.register_prehook(skip_encoder)
    surrogate = torch.stack([(p * g.to(p.dtype)).sum() for p, g in found.items()]).sum()
    try:
        torch.autograd.backward([*losses, surrogate], retain_graph=retain_graph)
    finally:
        handle.remove()


def realigned(per_loss: Sequence[Tensor], scale: Tensor) -> Tensor:
    """``sum_k c_ik g_ik`` for per-loss gradients ``[B, ...]`` (at the anchor or a layer output),
    half precision combined in float32."""
    shape = (scale.shape[0], *([1] * (per_loss[0].dim() - 1)))
    dtype = compute_dtype(per_loss[0])
    weights = scale.to(dtype).T.reshape(len(per_loss), *shape)
    total = per_loss[0].to(dtype) * weights[0]
    for g, w in zip(per_loss[1:], weights[1:], strict=True):
        total.addcmul_(g.to(dtype), w)  # in place: one output, no temporaries of its size
    return total


Rule = Callable[[nn.Module, Traced, Tensor], list[tuple[Tensor, Tensor]]]
"""A module's parameter gradients from its traced call and the coefficients ``scale [B, M]``."""


def _combined(t: Traced, scale: Tensor) -> list[Tensor | None]:
    """The realigned gradient at each of the call's outputs (None where none arrived)."""
    return [None if g is None else realigned(g, scale) for g in t.grads]


def _rule_for(module: nn.Module, t: Traced) -> Rule | None:
    if t.call.uses:
        return _broadcast
    if _forward_is(module, nn.Linear):
        return _linear
    if covered_conv(module):
        return _conv
    if any(_forward_is(module, cls) for cls in NORMS):
        return _norm
    if _forward_is(module, nn.Embedding) and not module.sparse:  # type: ignore[union-attr]
        return _embedding
    if attention.covered(module):
        return _attention
    return None


def _trainable(p: Tensor | None) -> bool:
    return p is not None and p.requires_grad


def _linear_pair(
    weight: Tensor | None, bias: Tensor | None, a: Tensor, per_loss: Sequence[Tensor], scale: Tensor
) -> list[tuple[Tensor, Tensor]]:
    """Weight and bias gradients of ``y = a W^T + b`` from its per-loss output gradients; rows
    that carry no gradient (`rows_with_gradient`) are left out before the realignment."""
    batch = per_loss[0].shape[0]
    a, per_loss = rows_with_gradient(
        a.reshape(batch, -1, a.shape[-1]), [g.reshape(batch, -1, g.shape[-1]) for g in per_loss]
    )
    d = realigned(per_loss, scale)
    out = []
    if weight is not None and _trainable(weight):
        out.append((weight, d.flatten(0, 1).T @ a.flatten(0, 1).to(d.dtype)))
    if bias is not None and _trainable(bias):
        out.append((bias, d.sum((0, 1))))
    return out


def _linear(module: nn.Module, t: Traced, scale: Tensor) -> list[tuple[Tensor, Tensor]]:
    assert isinstance(module, nn.Linear) and t.grads[0] is not None
    return _linear_pair(module.weight, module.bias, _input(t.call), t.grads[0], scale)


def _conv(module: nn.Module, t: Traced, scale: Tensor) -> list[tuple[Tensor, Tensor]]:
    assert isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d)
    d = _combined(t, scale)
    assert d[0] is not None
    out: list[tuple[Tensor, Tensor]] = []
    grad = d[0]
    if _trainable(module.weight):
        x = padded(module, _input(t.call).to(grad.dtype))
        weight = _CONV_WEIGHT_GRAD[len(module.kernel_size)](
            x,
            module.weight.shape,
            grad,
            stride=module.stride,
            padding=0,
            dilation=module.dilation,
            groups=module.groups,
        )
        out.append((module.weight, weight))
    if _trainable(module.bias):
        out.append((module.bias, grad.transpose(0, 1).flatten(1).sum(1)))  # type: ignore[arg-type]
    return out


def _norm(module: nn.Module, t: Traced, scale: Tensor) -> list[tuple[Tensor, Tensor]]:
    d = _combined(t, scale)
    assert d[0] is not None
    grad = d[0]
    rows, normalized = normalized_rows(module, [_input(t.call).to(grad.dtype)], grad.shape[0])
    d_rows = rows(grad)
    out: list[tuple[Tensor, Tensor]] = []
    weight: Tensor | None = getattr(module, "weight", None)
    bias: Tensor | None = getattr(module, "bias", None)
    if weight is not None and weight.requires_grad:
        out.append((weight, (normalized * d_rows).sum((0, 1)).reshape(weight.shape)))
    if bias is not None and bias.requires_grad:
        out.append((bias, d_rows.sum((0, 1)).reshape(bias.shape)))
    return out


def _embedding(module: nn.Module, t: Traced, scale: Tensor) -> list[tuple[Tensor, Tensor]]:
    d = _combined(t, scale)
    assert isinstance(module, nn.Embedding) and d[0] is not None
    if not _trainable(module.weight):
        return []
    index = _input(t.call).reshape(-1)
    rows = d[0].reshape(-1, module.embedding_dim)
    grad = torch.zeros(module.weight.shape, dtype=rows.dtype, device=rows.device)
    grad.index_add_(0, index, rows)
    if module.padding_idx is not None:
        grad[module.padding_idx] = 0
    return [(module.weight, grad)]


def _attention(module: nn.Module, t: Traced, scale: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Linear layers; separate query / key / value blocks are put back into one weight."""
    assert isinstance(module, nn.MultiheadAttention)
    out: list[tuple[Tensor, Tensor]] = []
    blocks: dict[int, list[tuple[Tensor, Tensor]]] = {}
    pairs = attention.projection_parameters(module)
    for j, per_loss in zip(t.call.positions, t.grads, strict=True):
        if per_loss is None:
            continue
        weight, bias = pairs[j]
        found = _linear_pair(weight, bias, t.call.args[j], per_loss, scale)
        if j in (attention.PROJECTIONS.index("output"), attention.PACKED):
            out += found
        else:
            blocks[j] = found
    whole: dict[Tensor, list[Tensor | None]] = {}
    for j in range(3):  # in_proj_weight / in_proj_bias hold the three blocks in order
        for p, g in blocks.get(j, []):
            parts = whole.setdefault(p, [None, None, None])
            parts[j] = g
    for p, parts in whole.items():
        present = [g for g in parts if g is not None]
        if p.shape[0] != 3 * module.embed_dim:  # q/k/v_proj_weight: one block each
            out += [(p, g) for g in present]
            continue
        full = torch.zeros(p.shape, dtype=present[0].dtype, device=p.device)
        size = module.embed_dim
        for j, block in enumerate(parts):
            if block is not None:
                full[j * size : (j + 1) * size] = block
        out.append((p, full))
    return out


def _broadcast(module: nn.Module, t: Traced, scale: Tensor) -> list[tuple[Tensor, Tensor]]:
    d = _combined(t, scale)
    own = dict(module.named_parameters(recurse=False))
    out: list[tuple[Tensor, Tensor]] = []
    for use, grad in zip(t.call.uses, d, strict=True):
        if grad is not None:
            p = own[use.parameter]
            summed = broadcast.to_operand(grad, use.operand).sum(0) * use.scale
            out.append((p, summed.reshape(p.shape)))
    return out

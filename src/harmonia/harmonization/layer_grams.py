"""Exact per-sample Gram contributions of one module's parameters, without flat gradients.

For a module called on the anchor path, the per-sample gradient of its parameters for loss ``k``
is determined by the call's inputs and the gradient ``d_k`` arriving at its output. Each rule
returns ``[B, M, M]``: ``<grad_ik, grad_il>`` summed over the module's parameters (and over all
its calls on the anchor path, cross terms included). Native rules cover `nn.Linear` (ghost
inner products or materialized per-sample gradients, whichever costs fewer operations),
`nn.LayerNorm`, `nn.RMSNorm`, `nn.GroupNorm` and `nn.Embedding`;
`harmonia.harmonization.conv_grams` adds `nn.Conv1d/2d/3d` (any stride, dilation, padding and
groups) and `harmonia.harmonization.attention` adds `nn.MultiheadAttention`.
Any other module falls back to `torch.func` (``vmap`` over samples of ``vjp`` of the module's
functional form), which also verifies that the module treats samples independently;
`harmonia.harmonization.rules` picks the rule and says when it falls back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap
from torch.utils._pytree import tree_flatten, tree_unflatten

from harmonia.harmonization.calls import Call, unit_parameters
from harmonia.harmonization.row_sparse import nonzero

MATERIALIZE_BUDGET = 1 << 24
"""Largest number of per-sample gradient entries held at once when materializing (chunked)."""
KEEP_BUDGET = 1 << 25
"""Most per-sample gradient entries one step keeps for the realigned gradient (`Kept`)."""


@dataclass
class Traced:
    """A recorded call on the anchor path and the gradients reaching its outputs.

    ``grads[j][k]`` is the gradient of loss ``k`` at output ``j`` (shape of that output), or
    ``grads[j]`` is None where output ``j`` is not on the anchor path.
    """

    call: Call
    grads: list[list[Tensor] | None]

    def release(self) -> None:
        """Free the output gradients once nothing else needs them (they are the largest tensors
        of a parameters-space step: one per loss at every layer output)."""
        self.grads = [None] * len(self.grads)

    @property
    def grad(self) -> list[Tensor]:
        """Per-loss gradients at the output of a one-output module."""
        grad = self.grads[0]
        assert grad is not None
        return grad


class Kept:
    """Per-sample, per-loss parameter gradients ``[B, M, *p.shape]`` that Gram rules materialized.

    The realigned gradient of such a parameter is ``sum_ik c_ik g_ik`` of these
    (`encoder_grads`), so the layer's output gradients need not be combined and pushed through
    its weight-gradient again. A rule offers a module's gradients when it formed them in one
    piece; they are kept while the step's total stays within `KEEP_BUDGET` entries.
    """

    def __init__(self, budget: int | None = None) -> None:
        self.by_module: dict[nn.Module, dict[Tensor, Tensor]] = {}
        self._left = KEEP_BUDGET if budget is None else budget

    def offer(self, module: nn.Module, grads: dict[Tensor, Tensor]) -> None:
        """Keep ``grads`` (parameter -> ``[B, M, *shape]``) for ``module`` if the budget allows."""
        size = sum(g.numel() for g in grads.values())
        if size <= self._left:
            self.by_module[module] = grads
            self._left -= size


def _forward_is(module: nn.Module, cls: type[nn.Module]) -> bool:
    """True when ``module`` computes exactly what ``cls`` does (no overridden forward)."""
    return isinstance(module, cls) and type(module).forward is cls.forward


def _input(call: Call) -> Tensor:
    return call.args[0] if call.args else next(iter(call.kwargs.values()))


def _cat(parts: list[Tensor], dim: int) -> Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim)


def _summed(parts: list[Tensor]) -> Tensor:
    """The sum of same-shape tensors, without a copy when there is one."""
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


def pairwise(inner: Callable[[int, int], Tensor], tasks: int) -> Tensor:
    """The symmetric ``[B, M, M]`` whose entry ``(k, l)`` is ``inner(k, l)`` (``[B]``, ``k <= l``)."""
    entries: dict[tuple[int, int], Tensor] = {}
    for k in range(tasks):
        for m in range(k, tasks):
            entries[k, m] = entries[m, k] = inner(k, m)
    rows = [torch.stack([entries[k, m] for m in range(tasks)], -1) for k in range(tasks)]
    return torch.stack(rows, -2)


def flat_gram(flat: Sequence[Tensor]) -> Tensor:
    """Per-sample Gram of flat per-loss gradients ``[B, P]`` (one per loss): ``[B, M, M]``."""
    return stacked_gram(torch.stack(list(flat), 1))


def stacked_gram(per_loss: Tensor) -> Tensor:
    """``[B, M, M]`` from per-sample, per-loss gradients ``[B, M, ...]``: one batched product.

    A product per pair of losses would write a temporary the size of the gradients for each
    pair; on gradients larger than the cache that was about 10x slower on CPU.
    """
    flat = per_loss.flatten(2)
    return flat @ flat.transpose(1, 2)


def params_gram(grads: dict[Tensor, Tensor]) -> Tensor:
    """The Gram over several parameters' per-sample, per-loss gradients ``[B, M, *shape]``."""
    parts = [stacked_gram(g) for g in grads.values()]
    return parts[0] if len(parts) == 1 else torch.stack(parts).sum(0)


def ghost_gram(rows: Sequence[Tensor], cross: Tensor) -> Tensor:
    """``sum_{t,s} cross[b,t,s] <rows[k][b,t], rows[m][b,s]>`` for per-loss rows ``[B, T, D]``."""
    return pairwise(
        lambda k, m: ((rows[k] @ rows[m].transpose(1, 2)) * cross).sum((1, 2)), len(rows)
    )


def _per_loss(
    traced: list[Traced], shape: Callable[[Tensor], Tensor], dtype: torch.dtype
) -> list[Tensor]:
    """Each loss's output gradients of all calls, reshaped and joined along dimension 1."""
    tasks = len(traced[0].grad)
    return [_cat([shape(t.grad[k]) for t in traced], 1).to(dtype) for k in range(tasks)]


def linear_gram(module: nn.Module, traced: list[Traced], dtype: torch.dtype) -> Tensor:
    """``nn.Linear``: weight via ghost inner products or per-sample gradients, plus bias."""
    assert isinstance(module, nn.Linear)
    batch = traced[0].grad[0].shape[0]
    a = _cat([_input(t.call).reshape(batch, -1, module.in_features) for t in traced], 1).to(dtype)
    d = _per_loss(traced, lambda g: g.reshape(batch, -1, module.out_features), dtype)
    return _weight_and_bias_gram(module, a, d)


def _weight_and_bias_gram(module: nn.Module, a: Tensor, d: Sequence[Tensor]) -> Tensor:
    """Gram of a layer that is linear in rows ``a [B, T, I]`` with output gradients ``d[k]``."""
    gram = a.new_zeros(a.shape[0], len(d), len(d))
    if module.weight.requires_grad:
        gram = gram + linear_weight_gram(a, d)
    if _trainable_bias(module):
        gram = gram + flat_gram([dk.sum(1) for dk in d])
    return gram


def linear_weight_gram(a: Tensor, d: Sequence[Tensor]) -> Tensor:
    """Gram of per-sample weight gradients ``sum_t d_kt a_t^T``; ``a [B,T,I]``, ``d[k] [B,T,O]``.

    Ghost inner products cost about ``T^2 (P O + I)`` operations per sample (``P`` pairs of
    losses), materialized gradients ``M T O I`` plus memory-bound passes over ``(M + P) O I``
    entries (weighted 4x); the cheaper one is used, materializing in chunks of samples to bound
    memory. Rows no loss sends gradient to in any sample are left out first (after the last
    attention only the pooled token's row reaches the anchor; tokens dropped later carry none).
    """
    a, d = rows_with_gradient(a, d)
    tasks = len(d)
    batch, steps, width_out = d[0].shape
    width_in = a.shape[-1]
    pairs = tasks * (tasks + 1) // 2
    ghost = steps * steps * (pairs * width_out + width_in)
    materialize = (tasks * steps + 4 * (tasks + pairs)) * width_out * width_in
    if ghost <= materialize:
        return ghost_gram(d, a @ a.transpose(1, 2))
    chunk = max(1, MATERIALIZE_BUDGET // (tasks * width_out * width_in))
    parts = []
    for start in range(0, batch, chunk):
        rows = slice(start, start + chunk)
        parts.append(stacked_gram(linear_weight_grads(a[rows], [dk[rows] for dk in d])))
    return _cat(parts, 0)


def linear_weight_grads(a: Tensor, d: Sequence[Tensor]) -> Tensor:
    """Per-sample, per-loss ``sum_t a_t d_kt^T``: ``[B, M, I, O]`` (the weight's transpose), one
    batched product for all losses."""
    return a.transpose(1, 2)[:, None] @ torch.stack(list(d), 1)


def live_rows(d: Tensor) -> Tensor:
    """``[T]``: where rows ``d[:, t]`` of ``d [B, T, O]`` hold a nonzero (or NaN) entry."""
    return nonzero(d, -1).any(0)


def rows_with_gradient(a: Tensor, d: Sequence[Tensor]) -> tuple[Tensor, Sequence[Tensor]]:
    """``a``, ``d`` without the rows ``t`` where every ``d[k][:, t]`` is zero (they add nothing)."""
    live = torch.stack([live_rows(dk) for dk in d]).any(0)
    if bool(live.all()):
        return a, d
    index = live.nonzero().squeeze(1)
    return a[:, index], [dk[:, index] for dk in d]


def _trainable_bias(module: nn.Module) -> bool:
    bias = getattr(module, "bias", None)
    return bias is not None and bias.requires_grad


def normalized_rows(
    module: nn.Module, inputs: Sequence[Tensor], batch: int
) -> tuple[Callable[[Tensor], Tensor], Tensor]:
    """How a norm's tensors become rows ``[B, T, width]`` of its affine width, and its inputs'
    normalized rows (``xhat``) joined over calls.

    LayerNorm and RMSNorm scale the last dimensions (rows: the leading ones); GroupNorm scales
    channels (dimension 1; rows: the positions of the grid).
    """
    assert isinstance(module, nn.LayerNorm | nn.RMSNorm | nn.GroupNorm)
    if isinstance(module, nn.GroupNorm):

        def rows(x: Tensor) -> Tensor:  # [B, C, *grid] -> [B, positions, C]
            return x.reshape(batch, module.num_channels, -1).transpose(1, 2)

        def normalize(x: Tensor) -> Tensor:
            return F.group_norm(x, module.num_groups, eps=module.eps)
    else:
        shape = tuple(module.normalized_shape)
        width = 1
        for size in shape:
            width *= size

        def rows(x: Tensor) -> Tensor:
            return x.reshape(batch, -1, width)

        def normalize(x: Tensor) -> Tensor:
            if isinstance(module, nn.LayerNorm):
                return F.layer_norm(x, shape, eps=module.eps)
            return F.rms_norm(x, shape, eps=module.eps)

    return rows, _cat([rows(normalize(x)) for x in inputs], 1)


def norm_gram(
    module: nn.Module, traced: list[Traced], dtype: torch.dtype, kept: Kept | None = None
) -> Tensor:
    """``nn.LayerNorm`` / ``RMSNorm`` / ``GroupNorm``: per sample ``sum_t xhat_t * d_t`` (weight)
    and ``sum_t d_t`` (bias), over rows ``t`` of the affine parameters' width (offered to
    ``kept``)."""
    batch = traced[0].grad[0].shape[0]
    inputs = [_input(t.call).to(dtype) for t in traced]
    rows, normalized = normalized_rows(module, inputs, batch)
    d = _per_loss(traced, rows, dtype)
    with_weight = module.weight is not None and module.weight.requires_grad
    with_bias = _trainable_bias(module)
    grads: dict[Tensor, Tensor] = {}
    if with_weight:
        grads[module.weight] = torch.stack([(normalized * dk).sum(1) for dk in d], 1)  # type: ignore[index]
    if with_bias:
        grads[module.bias] = torch.stack([dk.sum(1) for dk in d], 1)  # type: ignore[index]
    if kept is not None:
        kept.offer(module, {p: g.view(batch, len(d), *p.shape) for p, g in grads.items()})
    return params_gram(grads)


def embedding_gram(module: nn.Module, traced: list[Traced], dtype: torch.dtype) -> Tensor:
    """``nn.Embedding``: rows hit by the same index in a sample add up (ghost, equality mask)."""
    assert isinstance(module, nn.Embedding)
    batch = traced[0].grad[0].shape[0]
    index = _cat([_input(t.call).reshape(batch, -1) for t in traced], 1)
    d = _per_loss(traced, lambda g: g.reshape(batch, -1, module.embedding_dim), dtype)
    same = index[:, :, None] == index[:, None, :]
    if module.padding_idx is not None:
        real = index != module.padding_idx
        same = same & real[:, :, None] & real[:, None, :]
    return ghost_gram(d, same.to(dtype))


def functional_gram(
    module: nn.Module, traced: list[Traced], dtype: torch.dtype, kept: Kept | None = None
) -> Tensor:
    """Any other module: per-sample parameter gradients with ``vmap(vjp(functional_call))``
    (offered to ``kept``).

    The module is re-run on each sample alone; its output must match the captured batched output,
    which verifies that it treats samples independently. Random operations (dropout in training
    mode) cannot be replayed and are rejected.
    """
    owned = unit_parameters(module)
    params = {name: _whole(p.detach()) for name, p in owned.items()}
    on_path = next(g for g in traced[0].grads if g is not None)
    tasks, batch = len(on_path), on_path[0].shape[0]
    total: dict[str, Tensor] = {}
    for t in traced:
        grads = _per_sample_grads(module, params, t, batch, tasks)
        for name, g in grads.items():
            g = g.to(dtype)
            total[name] = total[name] + g if name in total else g
    if kept is not None:
        kept.offer(module, {owned[name]: g for name, g in total.items()})
    return params_gram({owned[name]: g.reshape(batch, tasks, -1) for name, g in total.items()})


def _whole(param: Tensor) -> Tensor:
    """A parameter as one plain tensor: FSDP2 keeps sharded DTensors between forward passes.

    ``full_tensor`` is a collective; every rank runs the same rules in the same order.
    """
    from torch.distributed.tensor import DTensor

    return param.full_tensor() if isinstance(param, DTensor) else param


def _per_sample_grads(
    module: nn.Module, params: dict[str, Tensor], t: Traced, batch: int, tasks: int
) -> dict[str, Tensor]:
    call = t.call
    leaves, spec = tree_flatten((call.args, call.kwargs))
    dims = [0 if _batched(x, batch) else None for x in leaves]
    if not any(d == 0 for d in dims):
        raise ValueError(
            f"{call.name} ({type(module).__name__}) is on the anchor path but none of its inputs "
            f"has the batch ({batch} samples) first, so its parameters' per-sample gradients "
            "cannot be separated"
        )
    on_path = [j for j, g in enumerate(t.grads) if g is not None]
    cotangents = [torch.stack(t.grads[j], 1) for j in on_path]  # type: ignore[arg-type]
    positions = [call.positions[j] for j in on_path]
    captured = [call.outputs[j] for j in on_path]

    def one_sample(
        sample_leaves: list[Any], sample_cotangents: list[Tensor]
    ) -> tuple[tuple[Tensor, ...], dict[str, Tensor]]:
        restored = [
            x.unsqueeze(0) if d == 0 else x for x, d in zip(sample_leaves, dims, strict=True)
        ]
        args, kwargs = tree_unflatten(restored, spec)

        def run(p: dict[str, Tensor]) -> tuple[Tensor, ...]:
            out, _ = tree_flatten(functional_call(module, p, args, kwargs))
            return tuple(out[i] for i in positions)

        outputs, pullback = vjp(run, params)[:2]
        cot = tuple(c.unsqueeze(1) for c in sample_cotangents)  # [M, 1, ...] per output
        (grads,) = vmap(pullback)(cot)
        return tuple(o.squeeze(0) for o in outputs), grads

    try:
        batched: tuple[tuple[Tensor, ...], dict[str, Tensor]] = vmap(one_sample, in_dims=(dims, 0))(
            leaves, cotangents
        )
    except RuntimeError as error:
        if "random" not in str(error).lower():
            raise
        raise ValueError(
            f"{call.name} ({type(module).__name__}) uses randomness (e.g. dropout in training "
            "mode) and has parameters no native rule covers, so its per-sample gradients cannot "
            "be recomputed exactly; move the random operation into its own submodule"
        ) from error
    outputs, grads = batched
    for recomputed, original in zip(outputs, captured, strict=True):
        if not _close(recomputed, original):
            raise ValueError(
                f"{call.name} ({type(module).__name__}) gives a different output when run on one "
                "sample at a time, so it mixes the samples of a batch (or keeps the batch in "
                "another dimension); per-sample parameter gradients are not defined for it"
            )
    return grads


def _batched(x: object, batch: int) -> bool:
    return isinstance(x, Tensor) and x.dim() > 0 and x.shape[0] == batch


def _close(a: Tensor, b: Tensor) -> bool:
    if a.shape != b.shape:
        return False
    if not a.is_floating_point():
        return bool(torch.equal(a, b))
    # the coarser of the two precisions (under autocast the captured output may be bf16 while
    # the recomputation, outside autocast, is float32)
    dtypes = {a.dtype, b.dtype}
    half = bool(dtypes & {torch.bfloat16, torch.float16})
    tolerance = 2e-2 if half else 1e-4 if torch.float32 in dtypes else 1e-10
    if not b.numel():
        return True
    scale = float(b.abs().max())
    return bool((a.double() - b.double()).abs().max() <= tolerance * (1.0 + scale))

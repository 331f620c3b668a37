"""Exact per-sample Gram contributions of one module's parameters, without flat gradients.

For a module called on the anchor path, the per-sample gradient of its parameters for loss ``k``
is determined by the call's inputs and the gradient ``d_k`` arriving at its output. Each rule
returns ``[B, M, M]``: ``<grad_ik, grad_il>`` summed over the module's parameters (and over all
its calls on the anchor path, cross terms included). Native rules cover `nn.Linear` (ghost
inner products or materialized per-sample gradients, whichever costs fewer operations),
`nn.LayerNorm`, `nn.RMSNorm` and `nn.Embedding`; any other module falls back to `torch.func`
(``vmap`` over samples of ``vjp`` of the module's functional form), which also verifies that the
module treats samples independently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap
from torch.utils._pytree import tree_flatten, tree_unflatten

from harmonia.harmonization.capture import Call, unit_parameters

MATERIALIZE_BUDGET = 1 << 24
"""Largest number of per-sample gradient entries held at once when materializing (chunked)."""


@dataclass
class Traced:
    """A recorded call on the anchor path and the gradients reaching its outputs.

    ``grads[j]`` is ``[B, M, *shape_j[1:]]`` (sample first, then loss), or None where output
    ``j`` is not on the anchor path.
    """

    call: Call
    grads: list[Tensor | None]

    @property
    def grad(self) -> Tensor:
        """The single output gradient of a one-output module."""
        grad = self.grads[0]
        assert grad is not None
        return grad


Rule = Callable[[nn.Module, list[Traced], torch.dtype], Tensor]


def _forward_is(module: nn.Module, cls: type[nn.Module]) -> bool:
    """True when ``module`` computes exactly what ``cls`` does (no overridden forward)."""
    return isinstance(module, cls) and type(module).forward is cls.forward


def _input(call: Call) -> Tensor:
    return call.args[0] if call.args else next(iter(call.kwargs.values()))


def _gram(flat: Tensor) -> Tensor:
    """``[B, M, P] -> [B, M, M]``."""
    return flat @ flat.transpose(1, 2)


def _ghost_gram(rows: Tensor, cross: Tensor) -> Tensor:
    """``sum_{t,s} cross[b,t,s] <rows[b,k,t], rows[b,l,s]>`` for rows ``[B, M, T, D]``."""
    batch, tasks, steps, width = rows.shape
    flat = rows.reshape(batch, tasks * steps, width)
    inner = _gram(flat).view(batch, tasks, steps, tasks, steps)
    return torch.einsum("bktls,bts->bkl", inner, cross)


def linear_gram(module: nn.Module, traced: list[Traced], dtype: torch.dtype) -> Tensor:
    """``nn.Linear``: weight via ghost inner products or per-sample gradients, plus bias."""
    assert isinstance(module, nn.Linear)
    batch = traced[0].grad.shape[0]
    tasks = traced[0].grad.shape[1]
    a = torch.cat([_input(t.call).reshape(batch, -1, module.in_features) for t in traced], 1)
    d = torch.cat([t.grad.reshape(batch, tasks, -1, module.out_features) for t in traced], 2)
    a, d = a.to(dtype), d.to(dtype)
    gram = a.new_zeros(batch, tasks, tasks)
    if module.weight.requires_grad:
        gram = gram + linear_weight_gram(a, d)
    if module.bias is not None and module.bias.requires_grad:
        gram = gram + _gram(d.sum(2))
    return gram


def linear_weight_gram(a: Tensor, d: Tensor) -> Tensor:
    """Gram of the per-sample weight gradients ``sum_t d_kt a_t^T`` for ``a [B,T,I]``, ``d [B,M,T,O]``."""
    batch, tasks, steps, width_out = d.shape
    width_in = a.shape[-1]
    ghost = steps * steps * (tasks * tasks * width_out + width_in + tasks * tasks)
    materialize = tasks * steps * width_out * width_in + tasks * tasks * width_out * width_in
    if ghost <= materialize:
        return _ghost_gram(d, a @ a.transpose(1, 2))
    chunk = max(1, MATERIALIZE_BUDGET // (tasks * width_out * width_in))
    parts = []
    for start in range(0, batch, chunk):
        a_part, d_part = a[start : start + chunk], d[start : start + chunk]
        stacked = d_part.permute(0, 2, 1, 3).reshape(a_part.shape[0], steps, tasks * width_out)
        per_sample = a_part.transpose(1, 2) @ stacked  # [b, I, M * O]
        per_sample = per_sample.view(-1, width_in, tasks, width_out).transpose(1, 2)
        parts.append(_gram(per_sample.reshape(-1, tasks, width_in * width_out)))
    return torch.cat(parts)


def norm_gram(module: nn.Module, traced: list[Traced], dtype: torch.dtype) -> Tensor:
    """``nn.LayerNorm`` / ``nn.RMSNorm``: per-sample ``sum_t xhat_t * d_t`` (weight), ``sum_t d_t`` (bias)."""
    assert isinstance(module, nn.LayerNorm | nn.RMSNorm)
    shape = tuple(module.normalized_shape)
    width = 1
    for size in shape:
        width *= size
    batch, tasks = traced[0].grad.shape[:2]
    weight = bias = None
    for t in traced:
        x = _input(t.call).to(dtype)
        if isinstance(module, nn.LayerNorm):
            xhat = F.layer_norm(x, shape, eps=module.eps)
        else:
            xhat = F.rms_norm(x, shape, eps=module.eps)
        xhat = xhat.reshape(batch, -1, width)
        d = t.grad.to(dtype).reshape(batch, tasks, -1, width)
        w = torch.einsum("btw,bktw->bkw", xhat, d)
        b = d.sum(2)
        weight = w if weight is None else weight + w
        bias = b if bias is None else bias + b
    assert weight is not None and bias is not None
    pieces = []
    if module.weight is not None and module.weight.requires_grad:
        pieces.append(weight)
    module_bias = getattr(module, "bias", None)
    if module_bias is not None and module_bias.requires_grad:
        pieces.append(bias)
    return _gram(torch.cat(pieces, -1))


def embedding_gram(module: nn.Module, traced: list[Traced], dtype: torch.dtype) -> Tensor:
    """``nn.Embedding``: rows hit by the same index in a sample add up (ghost, equality mask)."""
    assert isinstance(module, nn.Embedding)
    batch, tasks = traced[0].grad.shape[:2]
    index = torch.cat([_input(t.call).reshape(batch, -1) for t in traced], 1)
    d = torch.cat([t.grad.reshape(batch, tasks, -1, module.embedding_dim) for t in traced], 2)
    same = index[:, :, None] == index[:, None, :]
    if module.padding_idx is not None:
        real = index != module.padding_idx
        same = same & real[:, :, None] & real[:, None, :]
    return _ghost_gram(d.to(dtype), same.to(dtype))


def functional_gram(module: nn.Module, traced: list[Traced], dtype: torch.dtype) -> Tensor:
    """Any other module: per-sample parameter gradients with ``vmap(vjp(functional_call))``.

    The module is re-run on each sample alone; its output must match the captured batched output,
    which verifies that it treats samples independently. Random operations (dropout in training
    mode) cannot be replayed and are rejected.
    """
    params = {name: p.detach() for name, p in unit_parameters(module).items()}
    batch, tasks = traced[0].grads[_first_on_path(traced[0])].shape[:2]  # type: ignore[union-attr]
    if isinstance(module, nn.MultiheadAttention) and not module.batch_first:
        raise ValueError(
            f"{traced[0].call.name}: nn.MultiheadAttention with batch_first=False puts the batch "
            "in dimension 1; parameters space needs batch_first=True"
        )
    total: dict[str, Tensor] = {}
    for t in traced:
        grads = _per_sample_grads(module, params, t, batch, tasks)
        for name, g in grads.items():
            total[name] = total[name] + g if name in total else g
    flat = torch.cat([g.reshape(batch, tasks, -1).to(dtype) for g in total.values()], -1)
    return _gram(flat)


def _first_on_path(t: Traced) -> int:
    return next(j for j, g in enumerate(t.grads) if g is not None)


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
    cotangents = [
        g if g is not None else out.new_zeros(batch, tasks, *out.shape[1:])
        for g, out in zip(t.grads, call.outputs, strict=True)
    ]
    positions = call.positions

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
    for recomputed, captured in zip(outputs, call.outputs, strict=True):
        if not _close(recomputed, captured):
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
    tolerance = 1e-10 if a.dtype == torch.float64 else 1e-4 if a.dtype == torch.float32 else 2e-2
    scale = float(b.abs().max()) if b.numel() else 0.0
    return bool((a - b).abs().max() <= tolerance * (1.0 + scale)) if b.numel() else True


def rule_for(module: nn.Module) -> Rule:
    """The Gram rule that covers ``module``."""
    if _forward_is(module, nn.Linear):
        return linear_gram
    if _forward_is(module, nn.LayerNorm) or _forward_is(module, nn.RMSNorm):
        return norm_gram
    if _forward_is(module, nn.Embedding):
        return embedding_gram
    return functional_gram


def needs_outputs(module: nn.Module) -> bool:
    """Whether the rule for ``module`` verifies against its captured outputs."""
    return rule_for(module) is functional_gram

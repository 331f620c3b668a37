"""Parameters registered directly on a module and broadcast over the batch: tokens, positions.

Transformers keep a learned class or aggregation token and a position table as bare
``nn.Parameter`` attributes, used as ``token.expand(B, -1, -1)`` (often after a ``view``) or
``h + positions``. No layer owns them, so without this rule their module would be re-run once
per sample by torch.func. Every sample's copy of such a use is the same function of the
parameter, so sample ``i``'s gradient is the gradient at the use's output, row ``i``, summed back
to the parameter's shape. `find_uses` reads the uses off the autograd graph of one call (at
forward time, inside the capture hook); when a parameter is used in any other way it returns
None and the module keeps the exact torch.func fallback.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.autograd.graph import GradientEdge, Node

from harmonia.harmonization.layer_grams import Traced, flat_gram

SHAPE_ONLY: frozenset[str] = frozenset(
    {"ViewBackward0", "UnsafeViewBackward0", "UnsqueezeBackward0", "AliasBackward0"}
)
"""Nodes between a parameter and its broadcast that keep its entries in order (only reshape)."""


@dataclass(frozen=True)
class Use:
    """One broadcast of a parameter over the batch: the gradient at ``edge`` (``[B, ...]``)."""

    parameter: str
    edge: GradientEdge
    operand: tuple[int, ...]
    """Shape of the broadcast operand (the parameter, reshaped) before it met the batch."""
    scale: float
    """d output / d operand: 1, or the alpha of an add / subtract."""


def find_uses(
    module: nn.Module, inputs: Sequence[object], outputs: Sequence[Tensor], batch: int
) -> list[Use] | None:
    """The uses of ``module``'s own trainable parameters in this call, if all are broadcasts."""
    direct = {id(p): n for n, p in module.named_parameters(recurse=False) if p.requires_grad}
    stop = {id(x.grad_fn) for x in inputs if isinstance(x, Tensor) and x.grad_fn is not None}
    consumers: dict[int, list[tuple[Node, int]]] = {}  # node -> (consumer, slot)
    leaves: dict[str, Node] = {}
    seen: set[int] = set()
    pending = [t.grad_fn for t in outputs if t.grad_fn is not None]
    while pending:
        node = pending.pop()
        if id(node) in seen or id(node) in stop:
            continue
        seen.add(id(node))
        for slot, (child, _) in enumerate(node.next_functions):
            if child is None:
                continue
            consumers.setdefault(id(child), []).append((node, slot))
            variable = getattr(child, "variable", None)
            if variable is not None and id(variable) in direct:
                leaves[direct[id(variable)]] = child
            pending.append(child)
    uses: list[Use] = []
    for name, leaf in leaves.items():
        found = _broadcasts(leaf, consumers, name, batch)
        if found is None:
            return None
        uses += found
    return uses or None


def output_shape(node: Node) -> tuple[int, ...]:
    """The shape of the tensor that ``node``'s forward produced."""
    return tuple(int(s) for s in node._input_metadata[0].shape)  # type: ignore[attr-defined]


def _broadcasts(
    node: Node, consumers: dict[int, list[tuple[Node, int]]], name: str, batch: int
) -> list[Use] | None:
    """Follow ``node``'s consumers through reshapes to the ops that broadcast it over the batch."""
    operand = output_shape(node)
    uses: list[Use] = []
    for consumer, slot in consumers.get(id(node), []):
        kind = type(consumer).__name__
        if kind in SHAPE_ONLY:
            found = _broadcasts(consumer, consumers, name, batch)
            if found is None:
                return None
            uses += found
            continue
        if kind not in ("ExpandBackward0", "AddBackward0", "SubBackward0"):
            return None
        out = output_shape(consumer)
        over_batch = len(out) > 0 and out[0] == batch
        if not (over_batch and (len(operand) < len(out) or operand[0] == 1)):
            return None
        scale = 1.0
        if kind != "ExpandBackward0" and slot == 1:
            scale = float(consumer._saved_alpha)  # type: ignore[attr-defined]
            scale = -scale if kind == "SubBackward0" else scale
        uses.append(Use(name, GradientEdge(consumer, 0), operand, scale))
    return uses


def broadcast_gram(module: nn.Module, traced: list[Traced], dtype: torch.dtype) -> Tensor:
    """Per-sample gradients of directly registered parameters, summed over their broadcast uses."""
    on_path = next(g for t in traced for g in t.grads if g is not None)
    tasks, batch = len(on_path), on_path[0].shape[0]
    shapes = {n: p.shape for n, p in module.named_parameters(recurse=False)}
    totals: dict[str, list[Tensor]] = {}
    for t in traced:
        for use, grads in zip(t.call.uses, t.grads, strict=True):
            if grads is None:
                continue
            rows = [
                (to_operand(g.to(dtype), use.operand) * use.scale).reshape(
                    batch, *shapes[use.parameter]
                )
                for g in grads
            ]
            before = totals.get(use.parameter)
            totals[use.parameter] = (
                rows if before is None else [a + b for a, b in zip(before, rows, strict=True)]
            )
    return flat_gram(
        [torch.cat([rows[k].flatten(1) for rows in totals.values()], 1) for k in range(tasks)]
    )


def to_operand(grad: Tensor, operand: tuple[int, ...]) -> Tensor:
    """``[B, *out]`` -> ``[B, *operand]``: each sample's gradient summed over the broadcast dims."""
    padded = (1,) * (grad.dim() - len(operand)) + operand
    return grad.unsqueeze(1).sum_to_size(grad.shape[0], *padded).reshape(grad.shape[0], *operand)

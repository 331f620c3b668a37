"""Which exact Gram rule covers a module, and a one-time warning when none is native.

The fallback (`layer_grams.functional_gram`) re-runs the module once per sample under
``vmap``; on a whole transformer block that is tens of times slower than the rest of a step, so
a user is told once per module which one it is and what it cost.
"""

from __future__ import annotations

import functools
import time
import warnings
import weakref
from collections.abc import Callable

import torch
from torch import Tensor, nn

from harmonia.harmonization import attention, broadcast
from harmonia.harmonization.calls import unit_parameters
from harmonia.harmonization.conv_grams import conv_gram, covered_conv
from harmonia.harmonization.layer_grams import (
    Kept,
    Traced,
    _forward_is,
    embedding_gram,
    functional_gram,
    linear_gram,
    norm_gram,
)

Rule = Callable[[nn.Module, list[Traced], torch.dtype], Tensor]

MATERIALIZING: frozenset[Callable[..., Tensor]] = frozenset({conv_gram, norm_gram, functional_gram})
"""Rules that form per-sample gradients and offer them to a `Kept` (``kept=``)."""

NORMS: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm)


class FallbackWarning(UserWarning):
    """A module on the anchor path has no native per-sample Gram rule (parameters space)."""


_warned: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def rule_for(module: nn.Module) -> Rule:
    """The Gram rule that covers ``module``."""
    if _forward_is(module, nn.Linear):
        return linear_gram
    if any(_forward_is(module, cls) for cls in NORMS):
        return norm_gram
    if _forward_is(module, nn.Embedding):
        return embedding_gram
    if covered_conv(module):
        return conv_gram
    if attention.covered(module):
        return attention.attention_gram
    return functional_gram


def needs_outputs(module: nn.Module) -> bool:
    """Whether the rule for ``module`` verifies against its captured outputs."""
    return rule_for(module) is functional_gram


def module_gram(
    module: nn.Module, traced: list[Traced], dtype: torch.dtype, kept: Kept | None = None
) -> Tensor:
    """``rule_for(module)`` applied; the first fallback of each module is timed and reported.

    Rules that materialize per-sample gradients offer them to ``kept``.
    """
    base = rule_for(module)
    rule: Rule = functools.partial(base, kept=kept) if base in MATERIALIZING else base  # type: ignore[call-arg]
    broadcast_calls = sum(bool(t.call.uses) for t in traced)
    if broadcast_calls == len(traced):
        return broadcast.broadcast_gram(module, traced, dtype)
    if broadcast_calls:
        raise ValueError(
            f"{traced[0].call.name} ({type(module).__name__}) broadcasts its own parameters over "
            "the batch in some calls and uses them otherwise in others; parameters space cannot "
            "combine the two: move those parameters into a submodule"
        )
    if base is not functional_gram or module in _warned:
        return rule(module, traced, dtype)
    _warned.add(module)
    start = time.perf_counter()
    gram = rule(module, traced, dtype)
    if gram.is_cuda:
        torch.cuda.synchronize(gram.device)
    seconds = time.perf_counter() - start
    where = traced[0].call.name or "the captured encoder"
    owned = ", ".join(unit_parameters(module))
    warnings.warn(
        f"parameters space: {where} ({type(module).__name__}) has no native per-sample Gram "
        f"rule for its parameters ({owned}), so their per-sample gradients are recomputed with "
        f"torch.func, re-running the module one sample at a time under vmap "
        f"({seconds * 1e3:.0f} ms for {gram.shape[0]} samples in this step, and so every "
        "step). Native rules cover nn.Linear, nn.LayerNorm, "
        "nn.RMSNorm, nn.GroupNorm, nn.Embedding, nn.Conv1d/2d/3d and nn.MultiheadAttention "
        "(batch_first=True); keep parameters inside such layers, or use space='embedding'.",
        FallbackWarning,
        stacklevel=2,
    )
    return gram

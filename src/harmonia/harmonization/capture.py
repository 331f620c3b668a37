"""Recording, during the anchor's forward, what exact per-sample parameter Grams need.

Inside ``with Capture(encoder):`` every submodule of the encoder that owns parameters records each
of its calls: the inputs (references to tensors autograd keeps anyway) and the gradient edges of
its outputs. Edges are taken at call time, so later in-place changes of an output do not move
them; calls whose outputs the anchor does not depend on (a shared backbone running the other
modalities) simply receive no gradient later and are ignored. A covered
``nn.MultiheadAttention`` records its projections instead (`attention.attend` stands in for its
forward). Hooks and stand-ins live only inside the context; records live until the Harmonizer's
backward consumes them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.graph import get_gradient_edge
from torch.utils._pytree import tree_flatten
from torch.utils.hooks import RemovableHandle

from harmonia.harmonization import attention, broadcast, row_sparse
from harmonia.harmonization.calls import COMPOSITE, Call


@dataclass
class Capture:
    """Hooks on an encoder's parameter-owning submodules while the context is active."""

    encoder: nn.Module
    record: bool = True
    keep_outputs: Callable[[nn.Module], bool] = lambda module: True
    calls: list[Call] = field(default_factory=list)
    _handles: list[RemovableHandle] = field(default_factory=list)
    _stand_ins: list[nn.Module] = field(default_factory=list)

    def __enter__(self) -> Capture:
        if self.record:
            check_no_sample_mixing(self.encoder)
            self._handles += row_sparse.inside(self.encoder)
            for name, module in owners(self.encoder):
                if attention.covered(module) and "forward" not in module.__dict__:
                    setattr(module, "forward", attention.attend(module, name, self.calls.append))  # noqa: B010
                    self._stand_ins.append(module)
                    continue
                self._handles.append(
                    module.register_forward_hook(self._hook(name), with_kwargs=True)
                )
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module in self._stand_ins:
            delattr(module, "forward")
        self._stand_ins.clear()

    def _hook(self, name: str) -> Any:
        def hook(
            module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
        ) -> None:
            leaves, _ = tree_flatten(output)
            positions = [
                i for i, t in enumerate(leaves) if isinstance(t, Tensor) and t.requires_grad
            ]
            if not positions:
                return
            outputs = [leaves[i] for i in positions]
            fallback = self.keep_outputs(module)
            uses = self._broadcast_uses(module, args, kwargs, outputs) if fallback else None
            if uses is not None:  # its own parameters are only broadcast over the batch
                self.calls.append(
                    Call(
                        module,
                        name,
                        (),
                        {},
                        [],
                        [_shape(u) for u in uses],
                        list(range(len(uses))),
                        [u.edge for u in uses],
                        uses,
                    )
                )
                return
            edges = [get_gradient_edge(t) for t in outputs]
            shapes = [t.shape for t in outputs]
            kept = [t.detach() for t in outputs] if fallback else []
            self.calls.append(
                Call(module, name, args, dict(kwargs), kept, shapes, positions, edges)
            )

        return hook

    @staticmethod
    def _broadcast_uses(
        module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], outputs: list[Tensor]
    ) -> list[broadcast.Use] | None:
        if isinstance(module, COMPOSITE) or outputs[0].dim() == 0:
            return None
        inputs, _ = tree_flatten((args, kwargs))
        return broadcast.find_uses(module, inputs, outputs, outputs[0].shape[0])

    def clear(self) -> None:
        """Drop every record (and with it the references to activations)."""
        self.calls.clear()


def _shape(use: broadcast.Use) -> torch.Size:
    return torch.Size(broadcast.output_shape(use.edge.node))


def owners(encoder: nn.Module) -> list[tuple[str, nn.Module]]:
    """The submodules whose calls are recorded: every module owning trainable parameters.

    A `COMPOSITE` module stands for its whole subtree (it uses its children's weights itself).
    """
    found: list[tuple[str, nn.Module]] = []

    def visit(prefix: str, module: nn.Module) -> None:
        if isinstance(module, COMPOSITE):
            if any(p.requires_grad for p in module.parameters()):
                found.append((prefix, module))
            return
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            found.append((prefix, module))
        for child_name, child in module.named_children():
            visit(f"{prefix}.{child_name}" if prefix else child_name, child)

    visit("", encoder)
    return found


def check_no_sample_mixing(encoder: nn.Module) -> None:
    """Reject modules known to couple the samples of a batch (per-sample gradients undefined)."""
    for name, module in encoder.named_modules():
        where = name or type(encoder).__name__
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and (
            module.training or module.running_mean is None
        ):
            raise ValueError(
                f"{where} ({type(module).__name__}) normalizes with batch statistics, which mixes "
                "the samples of a batch, so per-sample parameter gradients are not defined: use "
                "space='embedding' or 'batch', put it in eval mode, or use LayerNorm/GroupNorm"
            )
        if isinstance(module, nn.MultiheadAttention) and not module.batch_first:
            raise ValueError(
                f"{where} (MultiheadAttention with batch_first=False) takes the batch in "
                "dimension 1; parameters space needs the batch first in every layer: build it "
                "(or its nn.TransformerEncoderLayer) with batch_first=True"
            )
        if isinstance(module, nn.Embedding) and module.scale_grad_by_freq:
            raise ValueError(
                f"{where} (Embedding with scale_grad_by_freq) scales gradients by counts over the "
                "whole batch, which mixes samples: use space='embedding' or 'batch'"
            )

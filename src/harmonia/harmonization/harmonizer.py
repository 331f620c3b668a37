"""The Harmonizer: a drop-in replacement for ``sum(losses).backward()`` with per-sample surgery.

Losses ``L_1..L_M`` share an anchor ``Z = f_theta(x)`` (``[B, ...]``). For sample ``i`` and loss
``k`` let ``u_ik`` be row ``i`` of ``dL_k/dZ`` and ``g_ik`` its gradient in the chosen space. A
method turns each sample's Gram matrix into coefficients ``C_ik``; then a single backward of
``sum_k L_k`` runs with the gradient arriving at ``Z`` replaced by ``sum_k w_i C_ik u_ik``
(``w_i``: curriculum weight). So the anchor's encoder receives ``sum_i w_i sum_k C_ik g_ik``
while every other parameter (heads, other towers, other modalities' use of a shared backbone)
receives the plain gradient of ``sum_k L_k``, accumulated into ``.grad`` exactly like
``loss.backward()`` does (optimizers, clipping, GradScaler, DDP keep working).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from harmonia.harmonization.calls import unit_parameters
from harmonia.harmonization.capture import Capture, owners
from harmonia.harmonization.encoder_grads import (
    backward_without_encoder,
    encoder_gradients,
    realigned,
)
from harmonia.harmonization.layer_grams import Kept, Traced
from harmonia.harmonization.methods import Method, build_method
from harmonia.harmonization.protocols import CurriculumLike
from harmonia.harmonization.rules import needs_outputs
from harmonia.harmonization.spaces import (
    SPACES,
    batch_gram,
    embedding_gram,
    parameter_gram,
    verify_per_sample,
)
from harmonia.harmonization.stats import HarmonizerStats


def _sharded(p: Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(p, DTensor)


class Harmonizer:
    """Per-sample cross-loss gradient harmonization for any model with a shared anchor.

    Args:
        method: a `Method` object (e.g. ``PCGrad()``) or the name of one in
            `harmonia.harmonization.methods.METHODS` ("none", "pcgrad", "gradvac", "upgrad",
            "mgda"; ``eps`` and ``**method_options`` then go to its constructor).
        space: "embedding" (``g_ik = u_ik``, cheapest), "parameters" (exact per-sample gradients
            over the anchor encoder's parameters; needs `capture`) or "batch" (whole-batch
            gradients over the encoder's parameters, classic multi-task surgery).
        curriculum: optional `CurriculumLike` (``weights(score, progress) -> [B]`` in [0, 1], see
            `harmonia.harmonization.protocols`); weights scale each sample's contribution to the
            anchor encoder only.
        seed: seeds the random orders of PCGrad/GradVac (their generator is in `state_dict`).
        eps: floor for denominators in the methods (0: smallest positive float64).
        verify: in parameters space, probe once per encoder structure that the anchor path keeps
            samples independent and that captured modules own every parameter it uses.
        **method_options: passed to the method (e.g. ``beta`` for gradvac).
    """

    def __init__(
        self,
        method: str | Method = "pcgrad",
        space: str = "embedding",
        curriculum: CurriculumLike | None = None,
        seed: int = 0,
        eps: float = 0.0,
        verify: bool = True,
        **method_options: Any,
    ) -> None:
        if space not in SPACES:
            raise ValueError(
                f"unknown harmonization space {space!r}; valid spaces: {', '.join(SPACES)}"
            )
        if curriculum is not None and not isinstance(curriculum, CurriculumLike):
            raise ValueError(
                f"curriculum must have a weights(score, progress) method, got {type(curriculum).__name__}"
            )
        if curriculum is not None and space == "batch":
            raise ValueError(
                "a curriculum weights samples by their per-sample conflict, which space='batch' "
                "does not measure; use space='embedding' or 'parameters'"
            )
        if isinstance(method, Method):
            if method_options:
                raise ValueError(
                    f"method options {', '.join(sorted(method_options))} belong to the "
                    f"{type(method).__name__}(...) constructor when passing a method object"
                )
            self.method = method
        else:
            self.method = build_method(method, eps=eps, **method_options)
        self.space = space
        self.curriculum = curriculum
        self.verify = verify
        self.generator = torch.Generator().manual_seed(seed)
        self._capture: Capture | None = None
        self._verified: set[tuple[int, ...]] = set()

    def __repr__(self) -> str:
        return (
            f"Harmonizer(method={self.method.name!r}, space={self.space!r}, "
            f"curriculum={self.curriculum!r})"
        )

    @contextmanager
    def capture(self, encoder: nn.Module) -> Iterator[None]:
        """Wrap the forward that produces the anchor (needed for ``space="parameters"``).

        In parameters space it records the calls of ``encoder``'s parameter-owning submodules
        (hooks exist only inside the block); in the other spaces it only remembers ``encoder``.
        """
        capture = Capture(encoder, record=self.space == "parameters", keep_outputs=needs_outputs)
        self._capture = capture
        with capture:
            yield

    def backward(
        self,
        losses: Mapping[str, Tensor],
        anchor: Tensor,
        encoder: nn.Module | None = None,
        sample_ids: Sequence[str] | None = None,
        progress: float | None = None,
        retain_graph: bool = False,
    ) -> HarmonizerStats:
        """Replace ``sum(losses.values()).backward()``; returns what was measured and done.

        ``losses`` maps names to scalar losses (at least two) that depend on ``anchor``
        (``[B, ...]``). ``encoder`` is the module producing the anchor (batch space; defaults to
        the captured one). ``progress`` (fraction of training done) is required with a curriculum.
        ``sample_ids`` are carried into the stats (e.g. for a conflict ledger).
        """
        names, values = self._check(losses, anchor, sample_ids, progress)
        capture, self._capture = self._capture, None
        try:
            with torch.autocast(anchor.device.type, enabled=False):
                grads = self._anchor_grads(values, anchor)
                gram, layers = self._gram(anchor, grads, capture, encoder)
                stats = self._combine(names, gram, grads, sample_ids, progress)
            self._apply(values, anchor, grads, stats, retain_graph, layers)
        finally:
            if capture is not None:
                capture.clear()
        return stats

    def _check(
        self,
        losses: Mapping[str, Tensor],
        anchor: Tensor,
        sample_ids: Sequence[str] | None,
        progress: float | None,
    ) -> tuple[tuple[str, ...], list[Tensor]]:
        if len(losses) < 2:
            raise ValueError(f"harmonization needs at least two losses, got {list(losses)}")
        for name, loss in losses.items():
            if not isinstance(loss, Tensor) or loss.dim() != 0:
                raise ValueError(f"loss {name!r} must be a scalar tensor")
            if not loss.requires_grad:
                raise ValueError(f"loss {name!r} does not require grad")
        if not isinstance(anchor, Tensor) or anchor.dim() < 1 or not anchor.requires_grad:
            raise ValueError("anchor must be a tensor [B, ...] that requires grad")
        if sample_ids is not None and len(sample_ids) != anchor.shape[0]:
            raise ValueError(f"got {len(sample_ids)} sample_ids for a batch of {anchor.shape[0]}")
        if self.curriculum is not None and progress is None:
            raise ValueError("a curriculum needs progress (the fraction of training done)")
        return tuple(losses), list(losses.values())

    def _anchor_grads(self, losses: list[Tensor], anchor: Tensor) -> Tensor:
        """``U [M, B, ...]``: the gradient of each loss with respect to the anchor."""
        rows = []
        for loss in losses:
            (g,) = torch.autograd.grad(loss, anchor, retain_graph=True, allow_unused=True)
            rows.append(torch.zeros_like(anchor) if g is None else g)
        return torch.stack(rows)

    def _gram(
        self, anchor: Tensor, grads: Tensor, capture: Capture | None, encoder: nn.Module | None
    ) -> tuple[Tensor, tuple[list[Traced], Kept] | None]:
        """The per-sample (or batch) Gram, and in parameters space the traced calls with the
        per-sample gradients the Gram rules kept."""
        if self.space == "embedding":
            return embedding_gram(grads), None
        if self.space == "batch":
            encoder = encoder if encoder is not None else capture.encoder if capture else None
            if encoder is None:
                raise ValueError("space='batch' needs the encoder (pass encoder= or use capture)")
            return batch_gram(anchor, grads, encoder), None
        if capture is None:
            raise ValueError(
                "space='parameters' needs the forward wrapped in "
                "`with harmonizer.capture(encoder): out = model(batch)` before backward"
            )
        if encoder is not None and encoder is not capture.encoder:
            raise ValueError("encoder differs from the module given to capture()")
        if self.verify:
            key = (id(capture.encoder), *(id(m) for _, m in owners(capture.encoder)))
            if key not in self._verified:
                verify_per_sample(anchor, capture.calls, capture.encoder)
                self._verified.add(key)
        gram, traced, kept = parameter_gram(anchor, grads, capture.calls)
        return gram, (traced, kept)

    def _combine(
        self,
        names: tuple[str, ...],
        gram: Tensor,
        grads: Tensor,
        sample_ids: Sequence[str] | None,
        progress: float | None,
    ) -> HarmonizerStats:
        gram = gram.detach().double()
        combination = self.method(gram, self.generator)
        weights = torch.ones(gram.shape[0], dtype=torch.float64, device=gram.device)
        stats = HarmonizerStats(
            names=names,
            space=self.space,
            method=self.method.name,
            gram=gram,
            coefficients=combination.coefficients,
            weights=weights,
            info=combination.info,
            sample_ids=None if sample_ids is None else tuple(sample_ids),
        )
        if self.curriculum is not None:
            assert progress is not None
            weights = torch.as_tensor(self.curriculum.weights(stats.conflict, progress))
            if weights.shape != (gram.shape[0],):
                raise ValueError(
                    f"curriculum returned weights of shape {tuple(weights.shape)}, expected ({gram.shape[0]},)"
                )
            weights = weights.to(device=gram.device, dtype=torch.float64)
            stats = dataclasses.replace(stats, weights=weights)
        return stats

    def _apply(
        self,
        losses: list[Tensor],
        anchor: Tensor,
        grads: Tensor,
        stats: HarmonizerStats,
        retain_graph: bool,
        layers: tuple[list[Traced], Kept] | None,
    ) -> None:
        """One backward of ``sum_k L_k`` with the anchor's gradient replaced by the harmonized one.

        In parameters space the anchor encoder's share comes from the per-loss passes and the
        per-sample gradients the Grams kept (`encoder_grads`), and the backward skips the
        encoder's anchor call (`encoder_grads.backward_without_encoder`).
        """
        scale = stats.coefficients * stats.weights[:, None]  # [B or 1, M]
        if self.method.name == "none" and self.curriculum is None and layers is None:
            torch.autograd.backward(losses, retain_graph=retain_graph)
            return
        encoder_grads = None
        if layers is not None and anchor.grad_fn is not None:
            traced, kept = layers
            # FSDP2 keeps parameters sharded between forward and backward: full backward there
            if not any(
                _sharded(p) for t in traced for p in unit_parameters(t.call.module).values()
            ):
                with torch.no_grad():
                    encoder_grads = encoder_gradients(traced, kept, scale)
        if encoder_grads is not None:
            backward_without_encoder(losses, anchor, encoder_grads, retain_graph)
            return
        combined = realigned(list(grads), scale)
        handle = anchor.register_hook(lambda g: combined.to(g.dtype))
        try:
            torch.autograd.backward(losses, retain_graph=retain_graph)
        finally:
            handle.remove()

    def state_dict(self) -> dict[str, Any]:
        """The method's state (e.g. GradVac targets) and the random generator's state."""
        return {
            "method": self.method.name,
            "method_state": self.method.state_dict(),
            "rng": self.generator.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict`; the method must match."""
        if state.get("method") != self.method.name:
            raise ValueError(
                f"state was saved for method {state.get('method')!r}, this harmonizer uses {self.method.name!r}"
            )
        self.method.load_state_dict(dict(state.get("method_state", {})))
        self.generator.set_state(state["rng"])

"""Online conflict curricula: per-sample weights from the conflict score, relaxed over training.

The Harmonizer measures, for every sample, how much its losses disagree on the shared anchor
(``score`` = the smallest pairwise cosine between the losses' per-sample gradients, in [-1, 1];
low means conflicting, i.e. a suspected misaligned sample). A curriculum turns that score and the
fraction of training done (``progress`` in [0, 1]) into a weight in [0, 1] per sample; the weight
multiplies the sample's contribution to the anchor encoder's gradient, so weight 0 means the
sample contributes nothing to the encoder that step.

Wu et al., "Scaling Multimodal Pre-Training via Cross-Modality Gradient Harmonization",
NeurIPS 2022: train first on the triplets whose gradients agree and admit the conflicting ones
progressively. Every curriculum here is a pure function of (score, progress): no hidden state,
deterministic, and at the end of its warm-up it keeps every sample with weight exactly 1.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from harmonia.errors import ConfigError
from harmonia.typed_config import from_dict

Shape = Literal["linear", "cosine"]
SHAPES: tuple[str, ...] = ("linear", "cosine")


def relaxation(progress: float, warmup: float, shape: str = "linear") -> float:
    """How far a schedule has moved from its start (0) to its end (1) at ``progress``.

    The schedule moves over the first ``warmup`` fraction of training and then stays at 1;
    ``shape`` is "linear" or "cosine" (slow start and slow finish). ``warmup`` 0 means the
    schedule is at its end from the first step.
    """
    check_progress(progress)
    if shape not in SHAPES:
        raise ValueError(f"schedule shape must be one of {', '.join(SHAPES)}, got {shape!r}")
    if warmup <= 0.0 or progress >= warmup:
        return 1.0
    fraction = progress / warmup
    if shape == "cosine":
        return 0.5 * (1.0 - math.cos(math.pi * fraction))
    return fraction


def check_progress(progress: float) -> None:
    """Reject a progress outside [0, 1] (or NaN): it is a bug in the caller's step counting."""
    if not (0.0 <= progress <= 1.0):
        raise ValueError(f"progress must be in [0, 1] (fraction of training done), got {progress}")


def _finite_scores(score: Tensor) -> Tensor:
    """The scores as a detached float vector in [-1, 1]; NaN counts as neutral (0).

    A NaN cosine comes from a zero or overflowing gradient (e.g. a step a GradScaler skips):
    it says nothing about alignment, so it is treated as neither clean nor conflicting.
    """
    if score.dim() != 1:
        raise ValueError(f"score must be a 1-D tensor [B], got shape {tuple(score.shape)}")
    score = score.detach()
    if not score.is_floating_point():
        score = score.float()
    return torch.nan_to_num(score, nan=0.0, posinf=1.0, neginf=-1.0).clamp(-1.0, 1.0)


def _top_k_mask(score: Tensor, k: int) -> Tensor:
    """Boolean mask of the ``k`` highest scores; equal scores are taken in index order."""
    order = torch.sort(score, descending=True, stable=True).indices
    mask = torch.zeros_like(score, dtype=torch.bool)
    mask[order[:k]] = True
    return mask


@dataclasses.dataclass(frozen=True)
class Curriculum(ABC):
    """Base class: a schedule over ``progress`` that maps conflict scores to weights in [0, 1].

    Subclasses are frozen dataclasses whose fields are their whole configuration; ``name`` is
    the key `build_curriculum` knows them by and ``to_config()`` is its inverse.
    """

    name: ClassVar[str]
    warmup: float = 0.5
    shape: Shape = "linear"

    def __post_init__(self) -> None:
        _require(self, "warmup", 0.0 <= self.warmup <= 1.0, "must be in [0, 1]")
        _require(self, "shape", self.shape in SHAPES, f"must be one of {', '.join(SHAPES)}")

    @abstractmethod
    def weights(self, score: Tensor, progress: float) -> Tensor:
        """Weights [B] in [0, 1] for conflict scores [B] at ``progress`` (same dtype and device)."""

    @abstractmethod
    def describe(self, progress: float) -> dict[str, float]:
        """The schedule's current value(s), for logging (e.g. {"tau": -0.2})."""

    def relaxation(self, progress: float) -> float:
        """How far the schedule has relaxed (0 at the start, 1 once the warm-up is over)."""
        return relaxation(progress, self.warmup, self.shape)

    def to_config(self) -> dict[str, Any]:
        """The options that rebuild this curriculum: ``build_curriculum(**c.to_config())``."""
        return {"name": self.name, **dataclasses.asdict(self)}


def _require(curriculum: Curriculum, field: str, ok: bool, message: str) -> None:
    if not ok:
        value = getattr(curriculum, field)
        raise ConfigError(f"curriculum {curriculum.name!r}: {field} {message}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class _ThresholdSchedule(Curriculum):
    """Shared by the threshold curricula: tau(progress) moves from ``start`` down to ``end``."""

    start: float = 0.0
    end: float = -1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self, "start", -1.0 <= self.start <= 1.0, "must be a cosine in [-1, 1]")
        _require(self, "end", -1.0 <= self.end <= self.start, "must be in [-1, start]")

    def threshold(self, progress: float) -> float:
        """tau(progress): ``start`` at progress 0, ``end`` once the warm-up is over."""
        return self.start + (self.end - self.start) * self.relaxation(progress)

    def describe(self, progress: float) -> dict[str, float]:
        return {"tau": self.threshold(progress)}


@dataclasses.dataclass(frozen=True)
class ThresholdCurriculum(_ThresholdSchedule):
    """Hard threshold (Wu et al. 2022): keep samples whose score >= tau(progress), drop the rest.

    tau starts at ``start`` (default 0: only samples whose gradients do not conflict) and is
    relaxed to ``end`` (default -1: every sample) over the first ``warmup`` fraction of training.
    Kept samples get weight 1, dropped ones exactly 0. If fewer than ``min_keep`` samples pass,
    the ``min_keep`` highest-scoring ones are kept anyway, so a step never loses its whole batch
    (``min_keep=0`` allows an all-zero step).
    """

    name: ClassVar[str] = "threshold"
    min_keep: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self, "min_keep", self.min_keep >= 0, "must be >= 0")

    def weights(self, score: Tensor, progress: float) -> Tensor:
        clean = _finite_scores(score)
        keep = clean >= self.threshold(progress)
        needed = min(self.min_keep, clean.numel())
        if int(keep.sum()) < needed:
            keep = _top_k_mask(clean, needed)
        return keep.to(clean.dtype)


@dataclasses.dataclass(frozen=True)
class SigmoidCurriculum(_ThresholdSchedule):
    """Soft threshold: w = sigmoid((score - tau(progress)) / temperature), faded to 1 by the end.

    The sigmoid gives conflicting samples a small weight instead of none, so the weights change
    smoothly as the score crosses tau. On its own it would still halve the weight of a sample at
    tau forever; the weight is therefore blended towards 1 as the schedule relaxes,
    ``w = r + (1 - r) * sigmoid(...)`` with r the relaxation, which keeps it smooth in progress
    and makes every weight exactly 1 once the warm-up is over, like the hard variant.
    """

    name: ClassVar[str] = "sigmoid"
    temperature: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        ok = math.isfinite(self.temperature) and self.temperature > 0.0
        _require(self, "temperature", ok, "must be a positive number")

    def weights(self, score: Tensor, progress: float) -> Tensor:
        clean = _finite_scores(score)
        relaxed = self.relaxation(progress)
        soft = torch.sigmoid((clean - self.threshold(progress)) / self.temperature)
        return (relaxed + (1.0 - relaxed) * soft).clamp(0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class QuantileCurriculum(Curriculum):
    """Keep the top q(progress) fraction of each batch by score, q rising from ``start`` to 1.

    Only the order of the scores matters, so the curriculum is unaffected by the score's scale
    drifting during training (cosines tend to grow as the encoders align). The number kept is
    ``max(min_keep, ceil(q * B))``; equal scores at the boundary are taken in batch order.
    """

    name: ClassVar[str] = "quantile"
    start: float = 0.5
    end: float = 1.0
    min_keep: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self, "start", 0.0 <= self.start <= 1.0, "must be a fraction in [0, 1]")
        _require(self, "end", self.start <= self.end <= 1.0, "must be in [start, 1]")
        _require(self, "min_keep", self.min_keep >= 0, "must be >= 0")

    def keep_fraction(self, progress: float) -> float:
        """q(progress): the fraction of each batch kept."""
        return self.start + (self.end - self.start) * self.relaxation(progress)

    def describe(self, progress: float) -> dict[str, float]:
        return {"keep_fraction": self.keep_fraction(progress)}

    def weights(self, score: Tensor, progress: float) -> Tensor:
        clean = _finite_scores(score)
        size = clean.numel()
        # the small tolerance keeps q * B = 3.0000000004 from rounding up to 4
        wanted = math.ceil(self.keep_fraction(progress) * size - 1e-9)
        keep = _top_k_mask(clean, min(size, max(self.min_keep, wanted)))
        return keep.to(clean.dtype)


CURRICULA: dict[str, type[Curriculum]] = {
    cls.name: cls for cls in (ThresholdCurriculum, SigmoidCurriculum, QuantileCurriculum)
}


def build_curriculum(name: str, **options: Any) -> Curriculum:
    """Build a curriculum by name ("threshold", "sigmoid", "quantile") from its options.

    Unknown names, unknown options and invalid values raise `ConfigError` naming the culprit.
    """
    cls = CURRICULA.get(name)
    if cls is None:
        known = ", ".join(sorted(CURRICULA))
        raise ConfigError(f"unknown curriculum {name!r}; known curricula: {known}")
    try:
        return from_dict(cls, options)  # every option checked against its type hint
    except ConfigError as err:
        message = str(err)
        prefix = f"curriculum {name!r}"
        raise ConfigError(
            message if message.startswith(prefix) else f"{prefix}: {message}"
        ) from None

"""ContrastiveObjective: a model output -> {loss name: per-sample loss [B]}.

Each `LossSpec` names a loss, its kind (``nce`` or ``milnce``), the common space it is computed
in, and the two modalities it contrasts (for ``milnce`` the second holds K candidates).
`default_specs` derives VATT's pair from a model config: NCE video-audio in space ``va`` and
MIL-NCE video-text in space ``vt``.
Per-sample vectors (0 where a sample is missing one of the modalities) are what the harmonizer
needs; `reduce` turns them into the masked means that plain training minimizes.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from torch import Tensor, nn

from harmonia.deprecation import REMOVED_IN
from harmonia.errors import ConfigError
from harmonia.losses.contrastive import milnce, nce
from harmonia.losses.gather import Gather
from harmonia.losses.temperature import DEFAULT_TEMPERATURE, LearnableTemperature
from harmonia.models.config import ModelConfig
from harmonia.typed_config import FieldError, check, from_dict, require_positive


class ContrastiveOutput(Protocol):
    """What the objective reads from a model output (`harmonia.models.VATTOutput` has it)."""

    embeddings: dict[str, dict[str, Tensor]]
    valid: dict[str, Tensor]


@dataclass(frozen=True)
class LossSpec:
    """One contrastive loss between two modalities' embeddings in one space."""

    name: str
    kind: Literal["nce", "milnce"]
    space: str
    modalities: tuple[str, str]
    """(anchor side, other side); for ``milnce`` the other side has K candidates [B, K, E]."""
    temperature: float = DEFAULT_TEMPERATURE
    learnable_temperature: bool = False
    """Learn the temperature (initialized at ``temperature``) as a parameter of the objective."""

    def validate(self) -> None:
        check(bool(self.name) and "." not in self.name, "name", f"invalid loss name {self.name!r}")
        check(
            self.modalities[0] != self.modalities[1],
            "modalities",
            "expected two different modalities",
        )
        require_positive(self, "temperature")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LossSpec:
        return from_dict(cls, data)


def default_specs(
    model: ModelConfig,
    temperature: float = DEFAULT_TEMPERATURE,
    learnable_temperature: bool = False,
) -> tuple[LossSpec, ...]:
    """VATT's losses for ``model``: one per space that pairs the anchor with one other modality,
    NCE against audio or video, MIL-NCE against text (its K candidate captions).

    For the shipped configs: ``va`` = NCE(video, audio) and ``vt`` = MIL-NCE(video, text).
    """
    specs = []
    for space in model.space_order():
        members = list(model.spaces[space].heads)
        if model.anchor not in members or len(members) != 2:
            continue
        other = next(m for m in members if m != model.anchor)
        kind: Literal["nce", "milnce"] = (
            "milnce" if model.modalities[other].kind == "text" else "nce"
        )
        pair = (model.anchor, other)
        specs.append(LossSpec(space, kind, space, pair, temperature, learnable_temperature))
    if not specs:
        raise ConfigError(
            f"losses: no space pairs the anchor {model.anchor!r} with one other modality; "
            "list the losses in losses.specs"
        )
    return tuple(specs)


class ContrastiveObjective(nn.Module):
    """Computes every configured loss per sample; learnable temperatures are its parameters."""

    def __init__(
        self, specs: Sequence[LossSpec] | None = None, gather: Gather | None = None
    ) -> None:
        super().__init__()
        if specs is None:  # before 0.1.0 the default pair was built in here
            warnings.warn(
                "ContrastiveObjective() without specs is deprecated: pass "
                "default_specs(model.config) (the default is removed in harmonia "
                f"{REMOVED_IN})",
                DeprecationWarning,
                stacklevel=2,
            )
            specs = default_specs(ModelConfig.named("tiny"))
        self.specs = tuple(specs)
        if not self.specs:
            raise ConfigError("losses: expected at least one loss")
        for i, spec in enumerate(self.specs):
            try:
                spec.validate()
            except FieldError as err:
                raise ConfigError(f"losses[{i}].{err.key}: {err.message}") from None
        names = [s.name for s in self.specs]
        if len(set(names)) != len(names):
            raise ConfigError(f"losses: names must be unique, got {names}")
        self.gather = gather
        self.temperatures = nn.ModuleDict(
            {
                s.name: LearnableTemperature(s.temperature)
                for s in self.specs
                if s.learnable_temperature
            }
        )

    def temperature(self, spec: LossSpec) -> float | Tensor:
        """The spec's temperature: a float, or the learnable one's current value."""
        return (
            self.temperatures[spec.name]() if spec.name in self.temperatures else spec.temperature
        )

    def valid(self, out: ContrastiveOutput) -> dict[str, Tensor]:
        """Loss name -> bool [B]: which samples take part in that loss."""
        return {s.name: self._mask(s, out).any(dim=1) for s in self.specs}

    def forward(self, out: ContrastiveOutput) -> dict[str, Tensor]:
        """Loss name -> per-sample loss [B] (0 for samples that do not take part)."""
        losses = {}
        for spec in self.specs:
            a, b = (self._embedding(spec, out, m) for m in spec.modalities)
            fn = nce if spec.kind == "nce" else milnce
            mask = self._mask(spec, out)
            valid = mask[:, 0] if spec.kind == "nce" else mask
            losses[spec.name] = fn(a, b, self.temperature(spec), valid, "none", self.gather)
        return losses

    def reduce(self, per_sample: Mapping[str, Tensor], out: ContrastiveOutput) -> dict[str, Tensor]:
        """Masked means of `forward`'s vectors (what nce/milnce return with reduction='mean')."""
        valid = self.valid(out)
        return {k: v.sum() / valid[k].sum().clamp(min=1) for k, v in per_sample.items()}

    def _embedding(self, spec: LossSpec, out: ContrastiveOutput, modality: str) -> Tensor:
        space = out.embeddings.get(spec.space)
        if space is None:
            raise ConfigError(
                f"loss {spec.name}: the model output has no space {spec.space!r} "
                f"(it has {sorted(out.embeddings)})"
            )
        if modality not in space:
            raise ConfigError(
                f"loss {spec.name}: space {spec.space!r} has no {modality!r} embedding "
                f"(it has {sorted(space)}; is {modality!r} in the batch?)"
            )
        return space[modality]

    def _mask(self, spec: LossSpec, out: ContrastiveOutput) -> Tensor:
        """Bool [B, K] (K = 1 for nce): candidate valid and both modalities present."""
        first, second = (out.valid[m] for m in spec.modalities)
        other = second if second.dim() == 2 else second[:, None]
        if spec.kind == "nce" and other.shape[1] != 1:
            raise ConfigError(
                f"loss {spec.name}: nce needs one {spec.modalities[1]} per sample; use milnce"
            )
        return other & first.bool()[:, None]

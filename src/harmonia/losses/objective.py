"""ContrastiveObjective: a model output -> {loss name: per-sample loss [B]}.

Each `LossSpec` names a loss, its kind (``nce`` or ``milnce``), the common space it is computed
in, and the two modalities it contrasts (for ``milnce`` the second holds K candidates). The
default is VATT's pair: NCE video-audio in space ``va`` and MIL-NCE video-text in space ``vt``.
Per-sample vectors (0 where a sample is missing one of the modalities) are what the harmonizer
needs; `reduce` turns them into the masked means that plain training minimizes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from torch import Tensor, nn

from harmonia.config import FieldError, check, from_dict, require_positive
from harmonia.errors import ConfigError
from harmonia.losses.contrastive import milnce, nce
from harmonia.losses.gather import Gather
from harmonia.losses.temperature import DEFAULT_TEMPERATURE, LearnableTemperature


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
    temperature: float = DEFAULT_TEMPERATURE, learnable_temperature: bool = False
) -> tuple[LossSpec, ...]:
    """VATT's losses: NCE(video, audio) in space va and MIL-NCE(video, text) in space vt."""
    return (
        LossSpec("va", "nce", "va", ("video", "audio"), temperature, learnable_temperature),
        LossSpec("vt", "milnce", "vt", ("video", "text"), temperature, learnable_temperature),
    )


class ContrastiveObjective(nn.Module):
    """Computes every configured loss per sample; learnable temperatures are its parameters."""

    def __init__(
        self, specs: Sequence[LossSpec] | None = None, gather: Gather | None = None
    ) -> None:
        super().__init__()
        self.specs = tuple(default_specs() if specs is None else specs)
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

"""Which of a model's modalities and spaces play which part in the evaluation protocol.

Names are never assumed: they are read from the model config by *kind* (the anchor is the video
the protocol classifies; one audio and one text modality are compared with it in the space they
share with the anchor).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from harmonia.errors import ConfigError


@dataclass(frozen=True)
class Roles:
    """Modality names (as the model and batches call them) and the shared spaces."""

    video: str
    audio: str
    text: str
    audio_space: str
    text_space: str

    @classmethod
    def from_model_config(cls, config: Any) -> Roles:
        """Read roles from a ModelConfig-like object (anchor, modalities[name].kind, spaces)."""
        anchor: str = config.anchor
        kinds: Mapping[str, str] = {n: m.kind for n, m in config.modalities.items()}
        spaces: Mapping[str, Any] = {s: set(sc.heads) for s, sc in config.spaces.items()}

        def of_kind(kind: str) -> str:
            names = [n for n, k in kinds.items() if k == kind and n != anchor]
            if not names:
                raise ConfigError(
                    f"evaluation needs a {kind} modality; the model has {dict(kinds)}"
                )
            return names[0]

        def shared(other: str) -> str:
            for space, members in spaces.items():
                if {anchor, other} <= members:
                    return space
            raise ConfigError(f"no space holds both {anchor} and {other}; cannot compare them")

        if kinds.get(anchor) != "video":
            raise ConfigError(f"evaluation expects a video anchor, the model's is {anchor!r}")
        audio, text = of_kind("audio"), of_kind("text")
        return cls(anchor, audio, text, shared(audio), shared(text))

"""A learnable softmax temperature (as CLIP), kept in log space and clamped."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

DEFAULT_TEMPERATURE = 0.07
"""The contrastive losses' softmax temperature unless a config says otherwise (VATT's, CLIP's)."""


class LearnableTemperature(nn.Module):
    """``forward()`` returns exp(log_temperature) clamped to [minimum, maximum]."""

    def __init__(
        self, initial: float = DEFAULT_TEMPERATURE, minimum: float = 0.01, maximum: float = 1.0
    ) -> None:
        super().__init__()
        if not 0.0 < minimum <= initial <= maximum:
            raise ValueError(
                f"need 0 < minimum <= initial <= maximum, got {minimum}, {initial}, {maximum}"
            )
        self.minimum, self.maximum = minimum, maximum
        self.log_temperature = nn.Parameter(torch.tensor(math.log(initial)))

    def forward(self) -> Tensor:
        return self.log_temperature.exp().clamp(self.minimum, self.maximum)

    def extra_repr(self) -> str:
        return f"value={self().item():.4g}, range=[{self.minimum}, {self.maximum}]"

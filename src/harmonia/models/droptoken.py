"""DropToken (VATT): train on a random subset of each sample's video/audio tokens.

Raw video and audio give long token sequences; VATT keeps a random fraction of them per sample
during training, which cuts the transformer's cost with little loss in quality. Evaluation sees
every token.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class DropToken(nn.Module):
    """Keeps ``round((1 - rate) * L)`` (at least one) random tokens of each sample in training."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"DropToken rate must be in [0, 1), got {rate}")
        self.rate = rate

    def kept(self, length: int) -> int:
        """How many of ``length`` tokens survive in training mode."""
        return max(1, round((1.0 - self.rate) * length))

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens [B, L, D] -> [B, L', D]; the identity in eval mode or at rate 0."""
        if not self.training or self.rate == 0.0:
            return tokens
        batch, length, width = tokens.shape
        scores = torch.rand(batch, length, device=tokens.device)
        keep = scores.argsort(dim=1)[:, : self.kept(length)].sort(dim=1).values
        return tokens.gather(1, keep.unsqueeze(-1).expand(-1, -1, width))

    def extra_repr(self) -> str:
        return f"rate={self.rate}"

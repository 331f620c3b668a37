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

    def keep(self, batch: int, length: int, device: torch.device) -> Tensor | None:
        """Sorted indices ``[batch, kept(length)]`` of the tokens each sample keeps; None where
        every token is kept (eval mode, or rate 0)."""
        if not self.training or self.rate == 0.0:
            return None
        scores = torch.rand(batch, length, device=device)
        return scores.argsort(dim=1)[:, : self.kept(length)].sort(dim=1).values

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens [B, L, D] -> [B, L', D]; the identity in eval mode or at rate 0."""
        return take(tokens, self.keep(tokens.shape[0], tokens.shape[1], tokens.device))

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


def take(x: Tensor, keep: Tensor | None) -> Tensor:
    """Rows ``keep [B, L']`` of each sample of ``x [B, L, ...]``; ``x`` itself where keep is None.

    Tokenizers take the kept rows of their patches and positions before the input projection,
    so the dropped tokens cost nothing there either (the projection is row-wise, so this equals
    dropping its outputs).
    """
    if keep is None:
        return x
    batch, length = x.shape[:2]
    # whole rows by index_select: a gather with an index expanded over the row costs ~10x more
    rows = (keep + torch.arange(batch, device=keep.device).unsqueeze(1) * length).flatten()
    return (
        x.reshape(batch * length, *x.shape[2:])
        .index_select(0, rows)
        .view(*keep.shape, *x.shape[2:])
    )

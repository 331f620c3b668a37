"""Projection heads into the common spaces (VATT's FAC): linear or a two-layer MLP."""

from __future__ import annotations

from torch import nn

from harmonia.models.config import HeadConfig


def build_head(config: HeadConfig, in_dim: int, out_dim: int) -> nn.Module:
    """``linear``: one nn.Linear; ``mlp``: Linear -> ReLU -> Linear (no sample-mixing norms)."""
    if config.kind == "linear":
        return nn.Linear(in_dim, out_dim)
    hidden = config.hidden or out_dim
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

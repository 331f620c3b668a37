"""Convolutional front ends: stages of conv -> max-pool -> GroupNorm -> GELU before the patches.

VATT cuts raw pixels into voxel patches and projects each with one linear layer. At the CPU sizes
that front end cannot see a handwritten digit's shape: trained supervised for 300 steps on the
digit, the tiny video tower reached 0.21-0.31 test accuracy with linear tubelets and 0.67 with a
per-frame conv stem in front of the same transformer (docs/model.md, *Front ends*). A stem keeps
the batch first and treats every sample alone (GroupNorm, not BatchNorm), so per-sample gradient
methods see each of its parameters, and it keeps the token grid of the patches it feeds: the
patch size is still given in input units and must be a multiple of the stem's total pooling.

Video runs ``Conv3d`` over ``[B, C, T, H, W]`` (a ``(1, k, k)`` kernel is a per-frame 2D conv);
audio runs ``Conv2d`` over log-mel frames ``[B, 1, frames, mel_bins]``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from harmonia.models.config import StemConfig


class ConvStem(nn.Module):
    """``len(channels)`` stages of same-padded conv, max-pool, GroupNorm and GELU.

    Pooling right after the conv runs the norm and the activation on a quarter of the cells
    (per 2x2 pool): on CPU those element-wise passes cost more than the convs themselves.
    """

    def __init__(self, in_channels: int, config: StemConfig) -> None:
        super().__init__()
        three_d = len(config.kernel) == 3
        kernel: Any = tuple(config.kernel)  # 2 or 3 sizes, checked by StemConfig
        padding: Any = tuple(k // 2 for k in config.kernel)
        layers: list[nn.Module] = []
        for out_channels in config.channels:
            conv = nn.Conv3d if three_d else nn.Conv2d
            layers.append(conv(in_channels, out_channels, kernel, padding=padding))
            if any(p > 1 for p in config.pool):
                layers.append((nn.MaxPool3d if three_d else nn.MaxPool2d)(config.pool, config.pool))
            layers += [nn.GroupNorm(min(config.groups, out_channels), out_channels), nn.GELU()]
            in_channels = out_channels
        self.stages = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, *grid]`` -> ``[B, channels[-1], *grid / downsample]``."""
        out: Tensor = self.stages(x)
        return out

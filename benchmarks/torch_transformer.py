"""A tri-modal transformer written the way PyTorch and open_clip users write one (a workload).

One shared ``nn.TransformerEncoder`` (width 128, 2 norm-first ``nn.TransformerEncoderLayer``
blocks, 4 heads, batch first) encodes video patches, audio frames and caption words; each
modality has its own ``nn.Linear`` (or ``nn.Embedding``) input layer, a learned aggregation token
and a position table, both bare ``nn.Parameter`` attributes as in open_clip. The pooled first
token is each modality's representation; VATT-like heads project video into a video-audio and a
video-text space, and two NCE losses couple the samples through in-batch negatives. The video
tower's pooled token is the anchor. Nothing here is harmonia's; `harmonia.harmonization` must
cover it as it is.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harmonia.losses.contrastive import nce

WIDTH = 128
SHAPES = {"video": (64, 96), "audio": (32, 64), "text": (16, 200)}
"""Tokens and input width (vocabulary for text) per modality."""


class Tower(nn.Module):
    """One modality's input layer, aggregation token and positions, then the shared blocks."""

    def __init__(self, modality: str, blocks: nn.TransformerEncoder) -> None:
        super().__init__()
        steps, width = SHAPES[modality]
        self.inp: nn.Module = (
            nn.Embedding(width, WIDTH) if modality == "text" else nn.Linear(width, WIDTH)
        )
        self.token = nn.Parameter(0.02 * torch.randn(WIDTH))
        self.positions = nn.Parameter(0.02 * torch.randn(steps + 1, WIDTH))
        self.blocks = blocks

    def forward(self, x: Tensor) -> Tensor:
        token = self.token.view(1, 1, -1).expand(len(x), -1, -1)
        h = torch.cat([token, self.inp(x)], 1) + self.positions
        return self.blocks(h)[:, 0]


class TriModal(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            WIDTH, 4, 4 * WIDTH, dropout=0.0, batch_first=True, norm_first=True
        )
        blocks = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.towers = nn.ModuleDict({m: Tower(m, blocks) for m in SHAPES})
        self.heads = nn.ModuleDict(
            {
                "video_va": nn.Linear(WIDTH, 64),
                "video_vt": nn.Linear(WIDTH, 64),
                "audio": nn.Linear(WIDTH, 64),
                "text": nn.Linear(WIDTH, 64),
            }
        )

    def forward(self, batch: dict[str, Tensor]) -> tuple[dict[str, Tensor], Tensor]:
        """The two losses and the anchor (video's pooled token)."""
        pooled = {m: self.towers[m](batch[m]) for m in SHAPES}

        def head(name: str, x: Tensor) -> Tensor:
            return F.normalize(self.heads[name](x), dim=-1)

        video = pooled["video"]
        losses = {
            "va": nce(head("video_va", video), head("audio", pooled["audio"])),
            "vt": nce(head("video_vt", video), head("text", pooled["text"])),
        }
        return losses, video


def build(batch_size: int, seed: int = 0) -> tuple[TriModal, dict[str, Tensor]]:
    """The model (train mode) and one random batch."""
    torch.manual_seed(seed)
    model = TriModal().train()
    gen = torch.Generator().manual_seed(seed + 1)
    batch = {
        m: torch.randint(0, width, (batch_size, steps), generator=gen)
        if m == "text"
        else torch.randn(batch_size, steps, width, generator=gen)
        for m, (steps, width) in SHAPES.items()
    }
    return model, batch


def steps(
    model: TriModal, batch: dict[str, Tensor], grid: list[tuple[str, str]]
) -> dict[str, Callable[[], None]]:
    """Plain backward and one Harmonizer step per (space, method), for `bench_harmonizer.measure`."""
    from harmonia.harmonization import Harmonizer

    def plain() -> None:
        model.zero_grad(set_to_none=True)
        losses, _ = model(batch)
        sum(losses.values()).backward()  # type: ignore[union-attr]

    def harmonized(method: str, space: str) -> Callable[[], None]:
        harmonizer = Harmonizer(method, space)

        def step() -> None:
            model.zero_grad(set_to_none=True)
            with harmonizer.capture(model.towers["video"]):
                losses, anchor = model(batch)
            harmonizer.backward(losses, anchor)

        return step

    out: dict[str, Callable[[], None]] = {"plain backward": plain}
    for space, method in grid:
        out[f"{space} {method}"] = harmonized(method, space)
    return out

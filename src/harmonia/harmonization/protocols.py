"""The small contracts the Harmonizer shares with code written elsewhere (import them from here).

`CurriculumLike` is what `Harmonizer(curriculum=...)` accepts: anything with
``weights(score, progress) -> Tensor`` (``harmonia.harmonization.curriculum`` implements it).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class CurriculumLike(Protocol):
    """Turns per-sample conflict scores into per-sample weights.

    ``score`` is ``HarmonizerStats.conflict``: shape ``[B]``, the smallest pairwise cosine
    between a sample's loss gradients, in ``[-1, 1]`` (NaN where a gradient is not finite, e.g.
    a step a GradScaler will skip). ``progress`` is the fraction of training done, in ``[0, 1]``.
    The result has shape ``[B]`` with values in ``[0, 1]``; the Harmonizer multiplies each sample's
    contribution to the anchor encoder's gradient by it (0: the sample does not train the encoder
    this step; the heads and other towers still get the plain gradient of its losses).
    """

    def weights(self, score: Tensor, progress: float) -> Tensor: ...

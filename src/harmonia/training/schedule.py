"""Learning-rate schedule: linear warm-up then cosine decay (VATT's recipe), a function of the step.

As in nanoGPT the loop sets the rate of every parameter group from the step number before each
optimizer step, so the schedule has no state of its own: resuming at step N resumes it too.
"""

from __future__ import annotations

import math


def warmup_cosine_factor(
    step: int, total_steps: int, warmup_steps: int, *, min_ratio: float = 0.0, cosine: bool = True
) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based, the step about to be taken).

    Rises linearly from 1/warmup to 1 over ``warmup_steps``, then follows a half cosine from 1
    down to ``min_ratio`` at ``total_steps`` (or stays at 1 when ``cosine`` is off).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if not cosine:
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosine:
    """The learning rate of each step of a run: ``lr * warmup_cosine_factor(step, ...)``."""

    def __init__(
        self,
        lr: float,
        total_steps: int,
        warmup_fraction: float,
        *,
        min_ratio: float = 0.0,
        cosine: bool = True,
    ) -> None:
        self.lr = lr
        self.total_steps = total_steps
        self.warmup_steps = round(warmup_fraction * total_steps)
        self.min_ratio = min_ratio
        self.cosine = cosine

    def __call__(self, step: int) -> float:
        factor = warmup_cosine_factor(
            step, self.total_steps, self.warmup_steps, min_ratio=self.min_ratio, cosine=self.cosine
        )
        return self.lr * factor

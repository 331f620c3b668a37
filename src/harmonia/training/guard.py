"""NaN/Inf guard: a step whose loss or gradient is not finite is skipped, not applied.

A step with a finite loss and gradient can still make the weights non-finite (an infinite
learning rate or weight decay, an overflow in the optimizer); the loop then stops at once, so no
checkpoint or final model with non-finite weights is ever written.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from harmonia.errors import HarmoniaError


class TrainingDiverged(HarmoniaError):
    """Too many consecutive steps had non-finite losses or gradients; the run stopped."""

    exit_code = 3


class BadStepGuard:
    """Counts non-finite steps; `update` says when ``limit`` have come in a row."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.consecutive = 0
        self.total = 0

    @staticmethod
    def is_finite(values: Iterable[float]) -> bool:
        """True when every value (losses, gradient norm) is a finite number."""
        return all(math.isfinite(v) for v in values)

    def update(self, ok: bool) -> bool:
        """Record whether a step was good; True once ``limit`` bad steps have come in a row."""
        if ok:
            self.consecutive = 0
            return False
        self.consecutive += 1
        self.total += 1
        return self.consecutive >= self.limit

    def error(self, step: int, checkpoint: object) -> TrainingDiverged:
        """The error that stops the run, saying where the last good state was saved."""
        return TrainingDiverged(
            f"stopped at step {step}: {self.consecutive} consecutive steps had a non-finite loss "
            f"or gradient; last good state saved in {checkpoint} (lower optim.lr or check the data)"
        )

    def state_dict(self) -> dict[str, int]:
        """Counters to save with a checkpoint."""
        return {"consecutive": self.consecutive, "total": self.total}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore counters saved by `state_dict`."""
        self.consecutive = int(state["consecutive"])
        self.total = int(state["total"])


def weights_finite(parameters: Iterable[torch.Tensor]) -> bool:
    """True when every weight this process holds is a finite number (one sync, no collective).

    Under FSDP2 each rank checks its own shards (the caller combines the ranks' answers): a
    reduction over a whole sharded DTensor would be one implicit collective per parameter.
    """
    sums = [_local(p).detach().float().sum() for p in parameters]
    return bool(torch.isfinite(torch.stack(sums)).all()) if sums else True


def _local(param: torch.Tensor) -> torch.Tensor:
    to_local = getattr(param, "to_local", None)  # a DTensor's shard on this rank
    return to_local() if callable(to_local) else param


def weights_error(step: int, newest_checkpoint: object) -> TrainingDiverged:
    """The error that stops a run whose weights became non-finite at ``step``."""
    return TrainingDiverged(
        f"stopped at step {step}: the weights became non-finite after an optimizer step with a "
        f"finite loss and gradient (check optim.lr and optim.weight_decay); nothing was saved "
        f"from this step on; newest checkpoint: {newest_checkpoint or 'none yet'}"
    )

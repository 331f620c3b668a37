"""Did each loss learn? A verdict per loss from its training and held-out losses vs. chance.

A contrastive loss over a batch of ``B`` candidates starts at ``ln B`` (chance: every candidate
equally likely). A training loss well below chance alone can be memorization of the training
pairs; only the held-out loss (validation batches, their own chance level) shows whether it
learned something that transfers. The conflict score, the curriculum and the audit mean nothing
for a loss that has not: its gradient is noise, or fits the training pairs only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

FITS = 0.9
"""A training loss at or below this fraction of chance has fit the training pairs."""
TRANSFERS = 0.95
"""A held-out loss at or below this fraction of its chance level has learned what transfers."""

Verdict = Literal["learned", "memorizes", "near chance"]


@dataclass(frozen=True)
class LossHealth:
    """One loss's verdict and the numbers behind it."""

    name: str
    verdict: Verdict
    train: float
    train_chance: float
    held_out: float | None
    held_out_chance: float

    @property
    def learned(self) -> bool:
        return self.verdict == "learned"

    def sentence(self) -> str:
        """One line for a person: the numbers and what they mean."""
        where = f"training {self.train:.2f} (chance ln B = {self.train_chance:.2f})"
        if self.held_out is not None:
            where += f", held-out {self.held_out:.2f} (chance {self.held_out_chance:.2f})"
        if self.verdict == "near chance":
            return (
                f"{self.name}: {where}: near chance: it has learned nothing yet, so its "
                "gradients carry no signal about misalignment"
            )
        if self.verdict == "memorizes":
            return (
                f"{self.name}: {where}: fits the training pairs but not the held-out ones "
                "(memorization, or held-out data unlike the training data)"
            )
        assert self.held_out is not None
        below = 100 * (1 - self.held_out / self.held_out_chance)
        return f"{self.name}: {where}: learned ({below:.0f}% below chance on held-out pairs)"

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any]) -> LossHealth:
        """Inverse of `to_dict` (as stored under ``learning`` in summary.json)."""
        held_out = data.get("held_out")
        return cls(
            name,
            data["verdict"],
            float(data["train"]),
            float(data["train_chance"]),
            None if held_out is None else float(held_out),
            float(data["held_out_chance"]),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "train": self.train,
            "train_chance": self.train_chance,
            "held_out": self.held_out,
            "held_out_chance": self.held_out_chance,
        }


def judge(
    name: str, train: float, held_out: float | None, train_batch: int, held_out_batch: int
) -> LossHealth:
    """The verdict for one loss from its final training and held-out (mean per-sample) losses."""
    chance, val_chance = math.log(train_batch), math.log(held_out_batch)
    fits = train <= FITS * chance
    transfers = held_out is not None and held_out <= TRANSFERS * val_chance
    verdict: Verdict = "learned" if fits and transfers else "memorizes" if fits else "near chance"
    return LossHealth(name, verdict, train, chance, held_out, val_chance)


def learning_health(
    metrics: Mapping[str, Any], train_batch: int, held_out_batch: int
) -> dict[str, LossHealth]:
    """A verdict per loss found in a metrics row (``loss/<name>``, ``val/loss/<name>``)."""
    out: dict[str, LossHealth] = {}
    for key, value in metrics.items():
        if not key.startswith("loss/") or key == "loss/total" or value is None:
            continue
        name = key.split("/", 1)[1]
        held_out = metrics.get(f"val/loss/{name}")
        out[name] = judge(
            name,
            float(value),
            None if held_out is None else float(held_out),
            train_batch,
            held_out_batch,
        )
    return out

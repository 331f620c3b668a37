"""What one harmonized backward measured and did, ready for logging."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from itertools import combinations
from typing import Literal

import torch
from torch import Tensor

from harmonia.deprecation import REMOVED_IN


def pair_names(names: tuple[str, ...]) -> list[tuple[int, int, str]]:
    """Every unordered pair of losses as ``(j, k, "name_j~name_k")`` with ``j < k``."""
    return [(j, k, f"{names[j]}~{names[k]}") for j, k in combinations(range(len(names)), 2)]


def cosines_from_gram(gram: Tensor) -> Tensor:
    """Pairwise cosines ``[B, M, M]``; 0 where a gradient is exactly zero (no direction)."""
    norms = gram.diagonal(dim1=1, dim2=2).clamp_min(0.0).sqrt()
    denom = norms[:, :, None] * norms[:, None, :]
    return gram / denom.clamp_min(torch.finfo(gram.dtype).tiny)


NoisinessScore = Literal["gradient_norm", "conflict", "loss"]
"""What the ledger records per sample (low = suspected misaligned), see `noisiness_scores`."""


def _over_batch_median(values: Tensor) -> Tensor:
    """``[B, M]`` non-negative values over each column's median where it is positive.

    The median (the lower one for an even count) is over the samples with a positive value; a
    column without any gets ratio 0 everywhere.
    """
    out = torch.zeros_like(values)
    for k in range(values.shape[1]):
        present = values[:, k] > 0
        if bool(present.any()):
            out[:, k] = values[:, k] / values[present, k].median()
    return out


def relative_norms(gram: Tensor) -> Tensor:
    """``[B, M]``: each loss's per-sample gradient norm over that loss's median norm in the batch."""
    return _over_batch_median(gram.diagonal(dim1=1, dim2=2).clamp_min(0.0).sqrt())


def noisiness_scores(
    gram: Tensor | None, kind: NoisinessScore = "gradient_norm", losses: Tensor | None = None
) -> Tensor:
    """Per-sample ledger scores ``[B]``; low = suspect.

    From a batch's per-sample Gram ``[B, M, M]``: ``conflict`` is the paper's gradient-conflict
    score, the smallest pairwise cosine between the losses' gradients; ``gradient_norm`` is
    ``(1 - r) / (1 + r)`` with ``r`` the largest `relative_norms` ratio of the sample: 0 for a
    sample whose gradients are the batch's median size, towards -1 when one loss's gradient
    dwarfs the batch's (the partner it is paired with does not fit), towards 1 when every loss
    is already satisfied. From the per-sample losses ``[B, M]`` (no gradients needed): ``loss``
    is the same ratio form with ``r`` the largest per-loss value over that loss's batch median.
    All lie in [-1, 1]. docs/curriculum.md compares them.
    """
    if kind == "loss":
        if losses is None:
            raise ValueError("noisiness score 'loss' needs the per-sample losses")
        r = _over_batch_median(losses.clamp_min(0.0)).amax(dim=1)
        return (1 - r) / (1 + r)
    if gram is None:
        raise ValueError(f"noisiness score {kind!r} needs the per-sample gradient Gram")
    if kind == "conflict":
        cos = cosines_from_gram(gram)
        tasks = cos.shape[-1]
        upper = torch.triu_indices(tasks, tasks, offset=1, device=cos.device)
        return cos[:, upper[0], upper[1]].amin(dim=-1)
    if kind != "gradient_norm":
        raise ValueError(
            f"unknown noisiness score {kind!r}; expected gradient_norm, conflict or loss"
        )
    r = relative_norms(gram).amax(dim=1)
    return (1 - r) / (1 + r)


@dataclass(frozen=True)
class HarmonizerStats:
    """Per-sample measurements of one step (tensors stay on their device until read).

    ``gram`` is the float64 Gram batch ``[B, M, M]`` the method saw (in batch space ``B`` is 1:
    the whole batch is one "sample"); ``coefficients`` ``[B, M]`` what the method returned;
    ``weights`` ``[B]`` the curriculum weights (ones without a curriculum).
    """

    names: tuple[str, ...]
    space: str
    method: str
    gram: Tensor
    coefficients: Tensor
    weights: Tensor
    info: dict[str, Tensor] = field(default_factory=dict)
    sample_ids: tuple[str, ...] | None = None

    @property
    def cosines(self) -> Tensor:
        """Pairwise cosines between the losses' gradients, ``[B, M, M]``."""
        return cosines_from_gram(self.gram)

    @property
    def cosine(self) -> Tensor:
        """``[B]`` for two losses (their cosine), else ``[B, M, M]`` (all pairs)."""
        cos = self.cosines
        return cos[:, 0, 1] if len(self.names) == 2 else cos

    @property
    def norms(self) -> Tensor:
        """Per-sample gradient norm of each loss, ``[B, M]``."""
        return self.gram.diagonal(dim1=1, dim2=2).clamp_min(0.0).sqrt()

    @property
    def conflict(self) -> Tensor:
        """Per-sample conflict ``[B]``: the smallest pairwise cosine (low = conflicting)."""
        return noisiness_scores(self.gram, "conflict")

    @property
    def score(self) -> Tensor:
        """Deprecated name of `conflict` (removed in 0.2.0)."""
        warnings.warn(
            f"HarmonizerStats.score is now .conflict; .score is removed in harmonia {REMOVED_IN}",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.conflict

    def to_metrics(self) -> dict[str, float]:
        """Flat floats for a logger: ``conflict/<a>~<b>/fraction``, ``.../mean_cos``, and so on."""
        cos = self.cosines.double()
        metrics: dict[str, float] = {}
        for j, k, name in pair_names(self.names):
            pair = cos[:, j, k]
            metrics[f"conflict/{name}/fraction"] = float((pair < 0).double().mean())
            metrics[f"conflict/{name}/mean_cos"] = float(pair.nanmean())
        metrics["conflict/score_mean"] = float(self.conflict.double().nanmean())
        norms = self.norms.double()
        for k, name in enumerate(self.names):
            metrics[f"grad_norm/{name}"] = float(norms[:, k].nanmean())
        metrics["curriculum/kept_fraction"] = float((self.weights > 0).double().mean())
        metrics["curriculum/mean_weight"] = float(self.weights.double().mean())
        for key, value in self.info.items():
            metrics[f"harmonizer/{key}"] = float(value)
        return metrics

"""How well a per-sample score finds misaligned samples: AUROC and average precision.

Any score works (the ledger's conflict cosine, a per-sample loss, an EL2N-style error norm); the
caller states its orientation. For the ledger's EMA cosine *low* means suspected noisy, so it is
passed with `higher_is_noisier=False` and negated before scoring.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import Tensor

from harmonia.losses.temperature import DEFAULT_TEMPERATURE


@dataclass(frozen=True)
class DetectionResult:
    """AUROC / AP (None when undefined: the ground truth has a single class), plus context.

    `precision_at_k` is the fraction of true noisy samples among the `n_noisy` highest-suspicion
    samples; `prevalence` is the AP of a random ranking.
    """

    auroc: float | None
    average_precision: float | None
    precision_at_k: float | None
    n: int
    n_noisy: int
    prevalence: float
    orientation: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def detection_metrics(
    scores: npt.ArrayLike, noisy: npt.ArrayLike, *, higher_is_noisier: bool
) -> DetectionResult:
    """Score a noisiness ranking against binary ground truth (True = misaligned)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(noisy, dtype=bool)
    if s.ndim != 1 or s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and flags {y.shape} must be equal-length vectors")
    if s.size == 0:
        raise ValueError("noise detection over no samples is undefined")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or Inf")
    suspicion = s if higher_is_noisier else -s
    n_noisy = int(y.sum())
    orientation = (
        "higher score = more suspect" if higher_is_noisier else "lower score = more suspect"
    )
    if n_noisy in (0, y.size):
        return DetectionResult(
            None, None, None, int(y.size), n_noisy, n_noisy / y.size, orientation
        )
    # stable sort on the negated suspicion: ties keep input order, so the result is deterministic
    top = np.argsort(-suspicion, kind="stable")[:n_noisy]
    return DetectionResult(
        auroc=float(roc_auc_score(y, suspicion)),
        average_precision=float(average_precision_score(y, suspicion)),
        precision_at_k=float(y[top].mean()),
        n=int(y.size),
        n_noisy=n_noisy,
        prevalence=n_noisy / y.size,
        orientation=orientation,
    )


def precision_at(flags: Sequence[bool | None], k: int) -> float | None:
    """Fraction misaligned among the first ``k`` of a most-suspect-first ranking's samples with
    ground truth (``flags``: None where unknown); None when fewer than ``k`` are known."""
    known = [bool(f) for f in flags if f is not None][:k]
    return sum(known) / k if len(known) == k and k > 0 else None


def error_norm(similarity: Tensor, temperature: float = DEFAULT_TEMPERATURE) -> Tensor:
    """EL2N-style score per row: || softmax(similarity / T) - onehot(diagonal) ||_2.

    `similarity` is [N, N] with the matched pair on the diagonal (e.g. video x audio embeddings of
    the same samples); a higher value means the pair is harder to match, i.e. more suspect.
    """
    if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"similarity must be square [N, N], got {tuple(similarity.shape)}")
    probs = torch.softmax(similarity.double() / temperature, dim=1)
    target = torch.eye(similarity.shape[0], dtype=probs.dtype, device=probs.device)
    return (probs - target).norm(dim=1)

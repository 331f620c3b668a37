"""Linear probe: logistic regression on frozen, standardized features (scikit-learn).

Trained on one split's features, scored on another's; deterministic (lbfgs, fixed seed).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


@dataclass(frozen=True)
class ProbeResult:
    """Eval-split accuracy of the probe; `chance` is the eval split's majority-class frequency."""

    accuracy: float
    train_accuracy: float
    n_train: int
    n_eval: int
    n_classes: int
    chance: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def linear_probe(
    train_x: npt.ArrayLike,
    train_y: Sequence[Hashable],
    eval_x: npt.ArrayLike,
    eval_y: Sequence[Hashable],
    *,
    c: float = 1.0,
    max_iter: int = 2000,
) -> ProbeResult:
    """Fit StandardScaler + LogisticRegression(C=c) on train features; report eval accuracy."""
    xtr = np.asarray(train_x, dtype=np.float64)
    xev = np.asarray(eval_x, dtype=np.float64)
    if xtr.ndim != 2 or xev.ndim != 2 or xtr.shape[1] != xev.shape[1]:
        raise ValueError(f"features must be [N, D] with equal D, got {xtr.shape} and {xev.shape}")
    if len(train_y) != len(xtr) or len(eval_y) != len(xev):
        raise ValueError("one label per feature row is required")
    if len(set(train_y)) < 2:
        raise ValueError("the probe's training split needs at least two classes")
    if len(eval_y) == 0:
        raise ValueError("the probe's eval split is empty")
    ytr = np.array([str(y) for y in train_y])
    yev = np.array([str(y) for y in eval_y])
    probe = make_pipeline(
        StandardScaler(), LogisticRegression(C=c, max_iter=max_iter, random_state=0)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        probe.fit(xtr, ytr)
    majority = Counter(yev.tolist()).most_common(1)[0][1]
    return ProbeResult(
        accuracy=float((probe.predict(xev) == yev).mean()),
        train_accuracy=float((probe.predict(xtr) == ytr).mean()),
        n_train=len(ytr),
        n_eval=len(yev),
        n_classes=len(set(ytr.tolist()) | set(yev.tolist())),
        chance=majority / len(yev),
    )

"""CLIP-style zero-shot classification: embed several text prompts per class, average, take argmax.

A class embedding is the renormalized mean of its prompts' (L2-normalized) embeddings; a query is
assigned the class whose embedding has the largest cosine with it (first class wins a tie).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class ZeroShotResult:
    """Top-1 accuracy over `n` queries; `per_class` maps each class to its own accuracy."""

    accuracy: float
    n: int
    n_classes: int
    per_class: dict[str, float]
    chance: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "n": self.n,
            "n_classes": self.n_classes,
            "chance": self.chance,
            "per_class": self.per_class,
        }


def class_embeddings(prompt_embeddings: Sequence[Tensor]) -> Tensor:
    """[C, E] class embeddings from one [P_c, E] tensor of prompt embeddings per class."""
    if not prompt_embeddings:
        raise ValueError("zero-shot needs at least one class")
    rows = []
    for emb in prompt_embeddings:
        if emb.ndim != 2 or emb.shape[0] == 0:
            raise ValueError(f"each class needs a [P, E] tensor of prompts, got {tuple(emb.shape)}")
        rows.append(torch.nn.functional.normalize(emb.double(), dim=-1).mean(dim=0))
    return torch.nn.functional.normalize(torch.stack(rows), dim=-1)


def embed_prompts(
    encode_text: Callable[[list[str]], Tensor], prompts: Mapping[Any, Sequence[str]]
) -> tuple[list[Hashable], Tensor]:
    """Encode every class's prompts with `encode_text` and return (class labels, [C, E])."""
    labels = list(prompts)
    per_class = [encode_text(list(prompts[label])).detach().cpu() for label in labels]
    return labels, class_embeddings(per_class)


def zero_shot_predict(queries: Tensor, classes: Tensor) -> Tensor:
    """Index of the most similar class embedding for each [N, E] query."""
    if queries.ndim != 2 or classes.ndim != 2 or queries.shape[1] != classes.shape[1]:
        raise ValueError(
            f"queries {tuple(queries.shape)} and classes {tuple(classes.shape)} must be [N, E] and [C, E]"
        )
    sim = torch.nn.functional.normalize(queries.double(), dim=-1) @ classes.double().T
    return sim.argmax(dim=1)


def zero_shot_accuracy(
    queries: Tensor, classes: Tensor, class_labels: Sequence[Hashable], targets: Sequence[Hashable]
) -> ZeroShotResult:
    """Accuracy of `zero_shot_predict` against the true labels `targets` (one per query)."""
    if len(targets) != queries.shape[0]:
        raise ValueError(f"{len(targets)} targets for {queries.shape[0]} queries")
    if len(class_labels) != classes.shape[0]:
        raise ValueError(
            f"{len(class_labels)} class labels for {classes.shape[0]} class embeddings"
        )
    if len(targets) == 0:
        raise ValueError("zero-shot accuracy over no queries is undefined")
    predicted = [class_labels[i] for i in zero_shot_predict(queries, classes).tolist()]
    hits = [p == t for p, t in zip(predicted, targets, strict=True)]
    per_class: dict[str, float] = {}
    for label in class_labels:
        mine = [h for h, t in zip(hits, targets, strict=True) if t == label]
        if mine:
            per_class[str(label)] = sum(mine) / len(mine)
    return ZeroShotResult(
        accuracy=sum(hits) / len(hits),
        n=len(hits),
        n_classes=len(class_labels),
        per_class=per_class,
        chance=1.0 / len(class_labels),
    )

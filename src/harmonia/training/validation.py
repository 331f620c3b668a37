"""The periodic validation pass: each loss on held-out batches and its retrieval R@1.

This is the trainer's quick health check, not the evaluation protocol (`harmonia eval` runs
zero-shot, retrieval, linear probes and noise detection). For every loss of the objective it
reports the mean per-sample loss over validation batches and Recall@1 in the loss's space, in
both directions, over the whole validation subset (a bag of K candidates scores by its best).
Modality and space names come from the objective's specs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn


def recall_at_1(a: Tensor, b: Tensor, valid_b: Tensor | None = None) -> tuple[float, float]:
    """R@1 for a -> b and b -> a, where a is [N, E] and b is [N, E] or a bag [N, K, E].

    Sample i is a hit when its own pair scores strictly above every other sample's (ties count
    as misses); a bag scores by its best valid candidate.
    """
    if b.dim() == 2:
        b = b[:, None, :]
    scores = torch.einsum("ie,jke->ijk", a.double(), b.double())
    if valid_b is not None:
        mask = valid_b if valid_b.dim() == 2 else valid_b[:, None]
        scores = scores.masked_fill(~mask.bool()[None, :, :], float("-inf"))
    sim = scores.amax(dim=-1)  # [N queries a, N gallery b]
    return _hits(sim), _hits(sim.T)


def _hits(sim: Tensor) -> float:
    own = sim.diagonal()
    others = sim.clone()
    others.fill_diagonal_(float("-inf"))
    return float((own > others.amax(dim=1)).double().mean())


@torch.no_grad()
def validate(
    model: nn.Module,
    objective: Any,
    batches: Iterable[Mapping[str, Any]],
    *,
    autocast: AbstractContextManager[Any] | None = None,
) -> dict[str, float]:
    """``val/loss/<name>`` and ``val/R@1/<name>/<a>-><b>`` (both directions) for each loss."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    pairs: dict[str, list[tuple[Tensor, Tensor, Tensor]]] = {}
    try:
        for batch in batches:
            with autocast if autocast is not None else nullcontext():
                out = model(batch)
                per_sample = objective(out)
            valid = objective.valid(out)
            for name, values in per_sample.items():
                sums[name] = sums.get(name, 0.0) + float(values.double().sum())
                counts[name] = counts.get(name, 0) + int(valid[name].sum())
            for spec in objective.specs:
                first, second = spec.modalities
                space = out.embeddings[spec.space]
                other = out.valid[second]
                mask = (other if other.dim() == 2 else other[:, None]) & out.valid[first][:, None]
                pairs.setdefault(spec.name, []).append(
                    (space[first].float(), space[second].float(), mask.bool())
                )
    finally:
        model.train(was_training)
    metrics = {f"val/loss/{k}": sums[k] / max(counts[k], 1) for k in sums}
    for spec in objective.specs:
        if spec.name not in pairs:  # a validation split smaller than one batch
            continue
        first, second = spec.modalities
        a, b, mask = (torch.cat(parts) for parts in zip(*pairs[spec.name], strict=True))
        keep = mask.any(dim=1)
        forward, backward = recall_at_1(a[keep], b[keep], mask[keep])
        metrics[f"val/R@1/{spec.name}/{first}->{second}"] = forward
        metrics[f"val/R@1/{spec.name}/{second}->{first}"] = backward
    return metrics

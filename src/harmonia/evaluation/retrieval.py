"""Retrieval metrics (Recall@K, median rank) from a query x gallery similarity matrix.

Relevance is explicit: a boolean matrix saying which gallery items count as a hit for each query.
`instance_relevance` (the matched item itself) and `class_relevance` (any item sharing the query's
label) build the two kinds used by the evaluation protocol.

Ties are broken pessimistically: a query's rank is one plus the number of *irrelevant* gallery items
scoring at least as high as its best relevant item. A collapsed model (all scores equal) therefore
gets the worst rank, never a lucky R@1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)


@dataclass(frozen=True)
class RetrievalResult:
    """Recall@K (fractions in [0, 1]) and rank statistics over the queries that had a relevant item."""

    recall: dict[int, float]
    median_rank: float
    mean_rank: float
    n_queries: int
    n_gallery: int
    relevance: str
    n_skipped: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: `R@1`, `R@5`, ..., `median_rank`, counts and the relevance definition."""
        out: dict[str, Any] = {f"R@{k}": v for k, v in self.recall.items()}
        out.update(
            median_rank=self.median_rank,
            mean_rank=self.mean_rank,
            n_queries=self.n_queries,
            n_gallery=self.n_gallery,
            n_skipped=self.n_skipped,
            relevance=self.relevance,
        )
        return out


def instance_relevance(
    query_ids: Sequence[Any], gallery_ids: Sequence[Any]
) -> npt.NDArray[np.bool_]:
    """Relevant iff the gallery item *is* the query's own item (same sample id)."""
    return _equal_matrix(query_ids, gallery_ids)


def class_relevance(
    query_labels: Sequence[Any], gallery_labels: Sequence[Any]
) -> npt.NDArray[np.bool_]:
    """Relevant iff the gallery item has the query's label (labels may be tuples, e.g. (digit, motion))."""
    return _equal_matrix(query_labels, gallery_labels)


def _equal_matrix(a: Sequence[Any], b: Sequence[Any]) -> npt.NDArray[np.bool_]:
    codes: dict[Any, int] = {}
    qa = np.array([codes.setdefault(x, len(codes)) for x in a], dtype=np.int64)
    qb = np.array([codes.setdefault(x, len(codes)) for x in b], dtype=np.int64)
    return qa[:, None] == qb[None, :]


def first_relevant_ranks(
    similarity: npt.ArrayLike, relevant: npt.ArrayLike
) -> npt.NDArray[np.int64]:
    """1-based rank of each query's best-scoring relevant item (pessimistic ties).

    Queries without any relevant item get rank 0 (callers drop them).
    """
    sim = np.asarray(similarity, dtype=np.float64)
    rel = np.asarray(relevant, dtype=bool)
    if sim.ndim != 2 or sim.shape != rel.shape:
        raise ValueError(
            f"similarity {sim.shape} and relevance {rel.shape} must be equal 2-D [queries, gallery]"
        )
    if not np.isfinite(sim).all():
        raise ValueError("similarity matrix contains NaN or Inf")
    best_relevant = np.where(rel, sim, -np.inf).max(axis=1)
    beaten_or_tied = (~rel) & (sim >= best_relevant[:, None])
    ranks = 1 + beaten_or_tied.sum(axis=1)
    ranks[~rel.any(axis=1)] = 0
    return ranks.astype(np.int64)


def retrieval_metrics(
    similarity: npt.ArrayLike,
    relevant: npt.ArrayLike,
    *,
    relevance: str,
    ks: Sequence[int] = DEFAULT_KS,
) -> RetrievalResult:
    """Recall@K and median/mean rank; `relevance` names the definition used (stored in the result)."""
    ranks = first_relevant_ranks(similarity, relevant)
    n_gallery = int(np.asarray(relevant).shape[1])
    scored = ranks[ranks > 0]
    if scored.size == 0:
        raise ValueError("no query has a relevant gallery item; retrieval is undefined")
    return RetrievalResult(
        recall={int(k): float((scored <= k).mean()) for k in ks},
        median_rank=float(np.median(scored)),
        mean_rank=float(scored.mean()),
        n_queries=int(scored.size),
        n_gallery=n_gallery,
        relevance=relevance,
        n_skipped=int(ranks.size - scored.size),
    )

"""Retrieval metrics on hand-made similarity matrices with known ranks."""

from __future__ import annotations

import numpy as np
import pytest

from harmonia.evaluation.retrieval import (
    class_relevance,
    first_relevant_ranks,
    instance_relevance,
    retrieval_metrics,
)


def test_perfect_retrieval_has_rank_one_everywhere() -> None:
    ids = [f"s{i}" for i in range(12)]
    sim = np.eye(12) + 0.01 * np.random.default_rng(0).random((12, 12))
    res = retrieval_metrics(sim, instance_relevance(ids, ids), relevance="instance")
    assert res.recall == {1: 1.0, 5: 1.0, 10: 1.0}
    assert res.median_rank == 1.0
    assert res.n_queries == 12 and res.n_gallery == 12


def test_worst_retrieval_puts_the_match_last() -> None:
    n = 12
    sim = -np.eye(n)
    res = retrieval_metrics(sim, np.eye(n, dtype=bool), relevance="instance")
    assert res.recall == {1: 0.0, 5: 0.0, 10: 0.0}
    assert res.median_rank == n and res.mean_rank == n


def test_known_ranks_and_median() -> None:
    # query q's match sits at rank q+1 (sim decreasing along each row, match at column q)
    n = 5
    sim = np.tile(np.arange(n, 0, -1, dtype=float), (n, 1))
    rel = np.eye(n, dtype=bool)
    assert first_relevant_ranks(sim, rel).tolist() == [1, 2, 3, 4, 5]
    res = retrieval_metrics(sim, rel, relevance="instance", ks=(1, 2, 4))
    assert res.recall == {1: 0.2, 2: 0.4, 4: 0.8}
    assert res.median_rank == 3.0
    assert res.mean_rank == 3.0


def test_even_count_median_is_midpoint() -> None:
    n = 4
    sim = np.tile(np.arange(n, 0, -1, dtype=float), (n, 1))
    res = retrieval_metrics(sim, np.eye(n, dtype=bool), relevance="instance")
    assert res.median_rank == 2.5


def test_ties_count_against_the_query() -> None:
    # all scores equal: a collapsed model must not look perfect
    sim = np.zeros((6, 6))
    res = retrieval_metrics(sim, np.eye(6, dtype=bool), relevance="instance")
    assert res.median_rank == 6.0 and res.recall[1] == 0.0
    # one irrelevant item tied with the match: rank 2
    sim = np.array([[0.5, 0.5, 0.1]])
    rel = np.array([[True, False, False]])
    assert first_relevant_ranks(sim, rel).tolist() == [2]


def test_class_level_relevance_counts_any_item_of_the_class() -> None:
    # gallery: two items of class a, two of class b; each query's best same-class item is second
    sim = np.array([[0.9, 0.8, 0.1, 0.0], [0.9, 0.1, 0.8, 0.0]])
    q_labels = ["b", "a"]
    g_labels = ["a", "b", "a", "b"]
    rel = class_relevance(q_labels, g_labels)
    assert rel.tolist() == [[False, True, False, True], [True, False, True, False]]
    cls = retrieval_metrics(sim, rel, relevance="class:digit")
    assert first_relevant_ranks(sim, rel).tolist() == [2, 1]
    assert cls.recall[1] == 0.5 and cls.relevance == "class:digit"
    # instance level for the same matrix (query i matches gallery i) is stricter
    inst = retrieval_metrics(sim, instance_relevance([0, 1], [0, 1, 2, 3]), relevance="instance")
    assert first_relevant_ranks(sim, instance_relevance([0, 1], [0, 1, 2, 3])).tolist() == [1, 3]
    assert inst.median_rank == 2.0


def test_tuple_labels_and_queries_without_relevant_items_are_skipped() -> None:
    rel = class_relevance([(1, "up"), (2, "left")], [(1, "up"), (1, "left")])
    assert rel.tolist() == [[True, False], [False, False]]
    res = retrieval_metrics(np.array([[0.1, 0.9], [0.5, 0.5]]), rel, relevance="class")
    assert res.n_queries == 1 and res.n_skipped == 1 and res.median_rank == 2.0


def test_invalid_inputs_raise() -> None:
    with pytest.raises(ValueError, match="equal"):
        first_relevant_ranks(np.zeros((2, 3)), np.zeros((3, 2), dtype=bool))
    with pytest.raises(ValueError, match="NaN"):
        first_relevant_ranks(np.array([[np.nan]]), np.array([[True]]))
    with pytest.raises(ValueError, match="no query"):
        retrieval_metrics(np.zeros((2, 2)), np.zeros((2, 2), dtype=bool), relevance="instance")


def test_to_dict_names_the_relevance() -> None:
    res = retrieval_metrics(np.eye(3), np.eye(3, dtype=bool), relevance="instance")
    d = res.to_dict()
    assert d["R@1"] == 1.0 and d["relevance"] == "instance" and d["median_rank"] == 1.0

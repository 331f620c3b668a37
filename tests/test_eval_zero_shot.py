"""Zero-shot classification on a constructed embedding set with a known answer."""

from __future__ import annotations

import pytest
import torch

from harmonia.evaluation.zero_shot import (
    class_embeddings,
    embed_prompts,
    zero_shot_accuracy,
    zero_shot_predict,
)


def _basis(i: int, dim: int = 4) -> torch.Tensor:
    v = torch.zeros(dim)
    v[i] = 1.0
    return v


def test_class_embedding_is_renormalized_prompt_mean() -> None:
    prompts = torch.stack([_basis(0), _basis(1)])
    (emb,) = class_embeddings([prompts])
    expected = torch.tensor([1.0, 1.0, 0.0, 0.0]) / 2**0.5
    assert torch.allclose(emb.float(), expected)


def test_prompt_averaging_changes_the_decision() -> None:
    # class "a" has one prompt near e0 and one near e2; a query at e2 is closer to "a"'s average
    # than to class "b" (which sits between e0 and e1) only because of the second prompt
    a_prompts = torch.stack([_basis(0), _basis(2)])
    b_prompts = torch.stack([_basis(0) + _basis(1)])
    classes = class_embeddings([a_prompts, b_prompts])
    query = _basis(2).unsqueeze(0)
    assert zero_shot_predict(query, classes).tolist() == [0]
    only_first = class_embeddings([a_prompts[:1], b_prompts])
    assert zero_shot_predict(_basis(1).unsqueeze(0), only_first).tolist() == [1]


def test_accuracy_on_noisy_cluster_queries() -> None:
    gen = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(5, 16, generator=gen), dim=-1)
    labels = ["zero", "one", "two", "three", "four"]
    targets = [labels[i % 5] for i in range(50)]
    queries = centres[torch.arange(50) % 5] + 0.05 * torch.randn(50, 16, generator=gen)
    # flip 10 queries to the next class centre: exactly 40 of 50 are right
    wrong = torch.arange(10)
    queries[wrong] = centres[(wrong + 1) % 5]
    res = zero_shot_accuracy(queries, centres, labels, targets)
    assert res.accuracy == pytest.approx(0.8)
    assert res.n == 50 and res.n_classes == 5 and res.chance == pytest.approx(0.2)
    assert res.per_class["zero"] == pytest.approx(0.8)


def test_embed_prompts_uses_the_encoder_per_class() -> None:
    table = {"red": _basis(0), "crimson": _basis(0), "blue": _basis(1)}
    seen: list[list[str]] = []

    def encode(texts: list[str]) -> torch.Tensor:
        seen.append(texts)
        return torch.stack([table[t] for t in texts])

    labels, classes = embed_prompts(encode, {"r": ["red", "crimson"], "b": ["blue"]})
    assert labels == ["r", "b"] and seen == [["red", "crimson"], ["blue"]]
    assert zero_shot_predict(torch.stack([_basis(1), _basis(0)]), classes).tolist() == [1, 0]


def test_shape_errors() -> None:
    with pytest.raises(ValueError):
        zero_shot_predict(torch.zeros(3, 4), torch.zeros(2, 5))
    with pytest.raises(ValueError):
        zero_shot_accuracy(torch.zeros(3, 4), torch.eye(4)[:2], ["a", "b"], ["a"])
    with pytest.raises(ValueError):
        class_embeddings([])

"""Names that moved in 0.1.0's redesign keep working for one release, with a DeprecationWarning."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch

ALIASES = [
    ("harmonia.config", "harmonia.typed_config", "load_config"),
    ("harmonia.reports", "harmonia.audit", "build_audit"),
    ("harmonia.evaluation.report", "harmonia.evaluation.table", "format_table"),
]


@pytest.mark.parametrize(("old", "new", "name"), ALIASES)
def test_an_old_module_path_warns_and_gives_the_new_objects(
    old: str, new: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(DeprecationWarning, match=rf"{old} moved to {new}; .* removed in harmonia"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    assert getattr(module, name) is getattr(importlib.import_module(new), name)


def test_stats_score_is_the_conflict_with_a_warning() -> None:
    from harmonia.harmonization.stats import HarmonizerStats

    gram = torch.tensor([[[1.0, -1.0], [-1.0, 4.0]], [[1.0, 0.5], [0.5, 1.0]]])
    stats = HarmonizerStats(("a", "b"), "embedding", "none", gram, torch.ones(2, 2), torch.ones(2))
    with pytest.warns(DeprecationWarning, match="HarmonizerStats.score is now .conflict"):
        score = stats.score
    assert torch.equal(score, stats.conflict)
    torch.testing.assert_close(stats.conflict, torch.tensor([-0.5, 0.5]))


def test_objective_without_specs_warns_and_uses_the_shipped_pair() -> None:
    from harmonia.losses import ContrastiveObjective, default_specs
    from harmonia.models import ModelConfig

    with pytest.warns(DeprecationWarning, match="default_specs"):
        objective = ContrastiveObjective()
    assert objective.specs == default_specs(ModelConfig.named("tiny"))
    assert [(s.name, s.kind, s.modalities) for s in objective.specs] == [
        ("va", "nce", ("video", "audio")),
        ("vt", "milnce", ("video", "text")),
    ]

"""Hostile configs: values that must be finite are validated (D7, D8); a run whose weights turn
non-finite stops without saving them, and such weights are refused when loaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harmonia.errors import CheckpointError, ConfigError
from harmonia.models import VATT, ModelConfig, WordTokenizer
from harmonia.training.config import load_train_config
from harmonia.training.guard import TrainingDiverged


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("optim.lr=.inf", "optim.lr"),
        ("optim.weight_decay=.inf", "optim.weight_decay"),
        ("optim.eps=.inf", "optim.eps"),
        ("optim.grad_clip=.inf", "optim.grad_clip"),
        ("losses.temperature=.inf", "losses.temperature"),
        ("losses.temperature=1e-320", "losses.temperature"),
        ("train.seed=9223372036854775808", "train.seed"),
        ("train.seed=-1", "train.seed"),
    ],
)
def test_values_that_must_be_finite_or_in_range_are_refused(override: str, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_train_config("demo", [override])
    assert str(caught.value).startswith(f"{field}: expected")


def test_the_largest_seed_still_trains_its_loader_workers(tiny_dataset: Path, tmp_path) -> None:
    from harmonia.training.config import MAX_SEED
    from harmonia.training.loop import train

    overrides = ["data.batch_size=8", "train.steps=1", "train.progress=false", "data.num_workers=2"]
    cfg = load_train_config("demo", [*overrides, f"train.seed={MAX_SEED}"])
    assert train(cfg, tmp_path / "run", data_dir=tiny_dataset)["status"] == "finished"


def test_weights_that_turn_non_finite_stop_the_run_and_are_never_saved(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harmonia.training.loop import train

    step = torch.optim.AdamW.step
    calls = []

    def poisoned(self: torch.optim.AdamW, *args: object, **kwargs: object) -> object:
        out = step(self, *args, **kwargs)  # a finite loss and gradient, then the weights break
        calls.append(1)
        if len(calls) == 3:
            self.param_groups[0]["params"][0].data.fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoned)
    run = tmp_path / "run"
    overrides = ["data.batch_size=8", "train.steps=6", "train.checkpoint_every=1"]
    cfg = load_train_config("demo", [*overrides, "train.progress=false"])
    with pytest.raises(TrainingDiverged, match="stopped at step 3: the weights became non-finite"):
        train(cfg, run, data_dir=tiny_dataset)
    assert not (run / "model").exists() and not (run / "summary.json").exists()
    saved = sorted(p.name for p in (run / "checkpoints").glob("step-*"))
    assert saved == ["step-00000002"]  # keep_last: 1; step 3 never saved
    for name in saved:
        VATT.from_pretrained(run / "checkpoints" / name)  # would refuse non-finite weights


@pytest.mark.parametrize("field", ["lr", "weight_decay", "eps"])
def test_optimizer_values_beyond_float32_are_refused(field: str) -> None:
    with pytest.raises(ConfigError, match=rf"^optim\.{field}: expected"):
        load_train_config("demo", [f"optim.{field}=1e39"])


def test_a_model_with_non_finite_weights_is_refused_when_loaded(tmp_path: Path) -> None:
    model = VATT(ModelConfig.named("tiny"), WordTokenizer.build(["a red digit"]))
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    model.save_pretrained(tmp_path / "model")
    with pytest.raises(CheckpointError, match=r"hold NaN or Inf"):
        VATT.from_pretrained(tmp_path / "model")

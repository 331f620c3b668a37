"""ContrastiveObjective on model outputs: default specs, masks, learnable temperature, errors."""

from __future__ import annotations

import pytest
import torch

from harmonia.errors import ConfigError
from harmonia.losses import ContrastiveObjective, LossSpec, default_specs, milnce, nce
from harmonia.models import VATT, ModelConfig, WordTokenizer
from harmonia.models.synthetic import WORDS, random_batch


@pytest.fixture(scope="module")
def model() -> VATT:
    torch.manual_seed(0)
    return VATT(ModelConfig.named("tiny"), WordTokenizer.build([" ".join(WORDS)])).eval()


def test_default_objective_is_va_nce_and_vt_milnce(model: VATT) -> None:
    batch = random_batch(model.config, 5, captions=3)
    batch["audio"][2] = 0.0
    batch["text"][4] = []
    out = model(batch)
    losses = ContrastiveObjective(default_specs(model.config))(out)
    assert set(losses) == {"va", "vt"}
    assert all(v.shape == (5,) for v in losses.values())
    va, vt = out.embeddings["va"], out.embeddings["vt"]
    want_va = nce(va["video"], va["audio"], valid=out.valid["audio"], reduction="none")
    want_vt = milnce(vt["video"], vt["text"], valid=out.valid["text"], reduction="none")
    assert torch.equal(losses["va"], want_va) and torch.equal(losses["vt"], want_vt)
    assert losses["va"][2] == 0 and losses["vt"][4] == 0
    assert losses["va"][[0, 1, 3, 4]].gt(0).all() and losses["vt"][:4].gt(0).all()


def test_reduce_gives_masked_means(model: VATT) -> None:
    batch = random_batch(model.config, 4)
    batch["audio"][0] = 0.0
    out = model(batch)
    objective = ContrastiveObjective(default_specs(model.config))
    means = objective.reduce(objective(out), out)
    va = out.embeddings["va"]
    torch.testing.assert_close(means["va"], nce(va["video"], va["audio"], valid=out.valid["audio"]))
    assert objective.valid(out)["va"].tolist() == [False, True, True, True]


def test_missing_video_drops_the_sample_from_both_losses(model: VATT) -> None:
    batch = random_batch(model.config, 4)
    batch["video"][1] = 0
    losses = ContrastiveObjective(default_specs(model.config))(model(batch))
    assert losses["va"][1] == 0 and losses["vt"][1] == 0


def test_learnable_temperature_is_a_parameter_that_learns(model: VATT) -> None:
    objective = ContrastiveObjective(default_specs(model.config, learnable_temperature=True))
    params = list(objective.parameters())
    assert len(params) == 2
    out = model(random_batch(model.config, 4))
    sum(v.sum() for v in objective(out).values()).backward()
    assert all(p.grad is not None and p.grad.abs() > 0 for p in params)
    assert abs(objective.temperatures["va"]().item() - 0.07) < 1e-6


def test_specs_from_config_data_and_errors(model: VATT) -> None:
    spec = LossSpec.from_dict(
        {"name": "av", "kind": "nce", "space": "va", "modalities": ["audio", "video"]}
    )
    assert spec.modalities == ("audio", "video")
    with pytest.raises(ConfigError, match="temperature"):
        LossSpec.from_dict(
            {"name": "x", "kind": "nce", "space": "va", "modalities": ["a", "b"], "temperature": 0}
        )
    with pytest.raises(ConfigError, match="kind"):
        LossSpec.from_dict(
            {"name": "x", "kind": "triplet", "space": "va", "modalities": ["a", "b"]}
        )
    with pytest.raises(ConfigError, match="unique"):
        ContrastiveObjective([spec, spec])
    out = model(random_batch(model.config, 2))
    wrong_space = LossSpec("at", "nce", "at", ("audio", "text"))
    with pytest.raises(ConfigError, match="no space 'at'"):
        ContrastiveObjective([wrong_space])(out)
    text_nce = LossSpec("vt", "nce", "vt", ("video", "text"))
    with pytest.raises(ConfigError, match="use milnce"):
        ContrastiveObjective([text_nce])(out)
    no_audio = model({"video": random_batch(model.config, 2)["video"]})
    with pytest.raises(ConfigError, match="in the batch"):
        ContrastiveObjective(default_specs(model.config))(no_audio)

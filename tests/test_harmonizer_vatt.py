"""The Harmonizer on the real (small, float64) VATT: every layer of its anchor path is covered.

The library never imports harmonia.models; this test checks the drop-in promise on the model the
project trains: a shared modality-agnostic backbone called for video, audio and text in one
forward, position/aggregation lookups through nn.Embedding, DropToken, masks, MIL-NCE.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

from harmonia.harmonization import Harmonizer
from harmonia.harmonization.methods.base import random_orders
from harmonia.losses import ContrastiveObjective, default_specs
from harmonia.models import VATT, ModelConfig, WordTokenizer
from harmonia.models.synthetic import WORDS, random_batch
from harmonizer_reference import (
    brute_force,
    harmonized_grads,
    max_deviation,
    pcgrad_flat,
    plain_grads,
    reference_grads,
)


@dataclass
class VattProblem:
    """Duck-types the test Problem: a seeded forward (DropToken draws the same every time)."""

    model: VATT
    objective: ContrastiveObjective
    batch: dict

    @property
    def encoder(self) -> nn.Module:
        return self.model.anchor_encoder()

    def parameters(self) -> list[nn.Parameter]:
        first = list(self.encoder.parameters())
        seen = {id(p) for p in first}
        return first + [p for p in self.model.parameters() if id(p) not in seen]

    def forward(self) -> tuple[dict[str, Tensor], Tensor]:
        torch.manual_seed(123)
        out = self.model(self.batch)
        return self.objective.reduce(self.objective(out), out), out.anchor


FRONT_ENDS = {
    "patches": {
        "video": {"shape": [4, 32, 32, 3], "patch": [2, 16, 16], "drop_token": 0.25},
        "audio": {"shape": [1280], "patch": [160], "drop_token": 0.25},
    },
    # conv stems on both signals: per-frame Conv3d + GroupNorm (the native conv rule),
    # Conv2d over log-mel frames (native too)
    "stems": {
        "video": {
            "shape": [4, 16, 16, 3],
            "patch": [2, 8, 8],
            "drop_token": 0.25,
            "stem": {"channels": [4, 4], "kernel": [1, 3, 3], "pool": [1, 2, 2], "groups": 2},
        },
        "audio": {
            "shape": [1280],
            "patch": [320],
            "drop_token": 0.25,
            "features": "log_mel",
            "log_mel": {"mel_bins": 8},
            "stem": {"channels": [4], "kernel": [3, 3], "pool": [2, 2], "groups": 2},
        },
    },
}
# a 3x3x3 Conv3d has no native rule: the torch.func fallback
FRONT_ENDS["stems-3d"] = {
    **FRONT_ENDS["stems"],
    "video": {
        **FRONT_ENDS["stems"]["video"],
        "stem": {**FRONT_ENDS["stems"]["video"]["stem"], "kernel": [3, 3, 3]},
    },
}


@pytest.fixture(scope="module", params=list(FRONT_ENDS))
def problem(request: pytest.FixtureRequest) -> VattProblem:
    config = ModelConfig.named(
        "tiny",
        modalities=FRONT_ENDS[request.param],
        backbone={"width": 16, "depth": 1, "heads": 2},
        spaces={"va": {"dim": 8}, "vt": {"dim": 8}},
    )
    torch.manual_seed(0)
    model = VATT(config, WordTokenizer.build([" ".join(WORDS)])).double().train()
    return VattProblem(
        model,
        ContrastiveObjective(default_specs(config)),
        random_batch(config, 5, captions=2, seed=3),
    )


def test_parameter_space_grams_equal_per_sample_gradients(problem: VattProblem) -> None:
    _, stats = harmonized_grads(problem, Harmonizer("none", "parameters"))  # type: ignore[arg-type]
    per_sample = brute_force(problem).per_sample  # type: ignore[arg-type]
    assert torch.allclose(stats.gram, per_sample @ per_sample.transpose(1, 2), atol=1e-8, rtol=0)
    assert bool((stats.norms > 0).all())


@pytest.mark.parametrize("space", ["embedding", "parameters"])
def test_pcgrad_on_vatt_matches_brute_force(problem: VattProblem, space: str) -> None:
    got, stats = harmonized_grads(problem, Harmonizer("pcgrad", space, seed=2))  # type: ignore[arg-type]
    orders = random_orders(5, 2, torch.Generator().manual_seed(2), torch.device("cpu"))
    want = reference_grads(problem, space, lambda v, i: pcgrad_flat(v, orders[i]))  # type: ignore[arg-type]
    assert max_deviation(got, want) <= 1e-8
    plain = plain_grads(problem)  # type: ignore[arg-type]
    n_enc = len(list(problem.encoder.parameters()))
    changed = max_deviation(got[:n_enc], plain[:n_enc]) > 1e-9
    assert changed == bool((stats.cosine < 0).any())  # surgery happened iff some sample conflicted

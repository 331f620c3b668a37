"""What the reproduction study runs: budgets, the shared datasets and one spec per training run.

The study tests the four claims of Wu et al. (NeurIPS 2022) on AV-MNIST-T:
- ablation: baseline / +GR / +CL / +GR+CL at several misalignment rates, several seeds, on the
  modality-agnostic backbone (the paper's setting);
- backbone: the baseline and +GR+CL on a modality-specific backbone, for contrast;
- space: +GR with exact parameter-space gradients instead of the shared embedding's;
- scaling: the clean source alone vs clean + a noisier extra source of the same size;
and two alternatives a practitioner would try with the same signal: a curriculum driven by a
gradient-free score (the online per-sample loss) and filtering (drop the baseline ledger's most
suspected triplets, retrain). Each variant is a shipped config. A run is named by what it
varies, so its directory is its cache key; a filtering run waits for the run whose ledger it
reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from harmonia.training.layout import LEDGER_CSV

VARIANTS: dict[str, str] = {
    "baseline": "study-baseline",
    "gr": "study-gr",
    "cl": "study-cl",
    "gr+cl": "study-gr-cl",
    "cl-loss": "study-cl-loss",
    "filter": "study-filter",
}
"""Study variant -> shipped config (all based on `study-base`)."""

VARIANT_LABELS: dict[str, str] = {
    "baseline": "baseline",
    "gr": "+GR",
    "cl": "+CL",
    "gr+cl": "+GR+CL",
    "cl-loss": "+CL (loss score)",
    "filter": "filter + retrain",
}
PAPER_VARIANTS = ("gr", "cl", "gr+cl")
"""The paper's arms, each compared with the baseline."""
ALTERNATIVES = ("cl-loss", "filter")
"""What a practitioner would try instead, with the same data and budget."""
LEDGER_FROM: dict[str, str] = {"filter": "baseline"}
"""Variant -> the variant whose run (same noise rate, seed, backbone) names the suspects."""

Backbone = Literal["modality_agnostic", "modality_specific"]
Space = Literal["embedding", "parameters"]
TrainData = Literal["clean", "clean+extra"]
MERGED_SPLIT = "train"
"""Name of the training split in the clean+extra view of a dataset (train and extra merged)."""


@dataclass(frozen=True)
class Budget:
    """How big the study is: seeds, steps, dataset sizes, and which contrasts it includes."""

    name: str
    seeds: int
    steps: int
    train: int
    val: int
    test: int
    batch_size: int = 32
    noise_rates: tuple[float, ...] = (0.0, 0.2, 0.4)
    extra_noise: float = 0.5
    contrast_noise: float = 0.4
    """Misalignment rate of the backbone and space contrasts."""
    checkpoint_every: int = 100
    eval_batch_size: int = 64
    description: str = ""

    def __post_init__(self) -> None:
        if self.seeds < 1 or self.steps < 1 or min(self.train, self.val, self.test) < 1:
            raise ValueError(f"budget {self.name!r}: seeds, steps and sizes must be >= 1")
        if self.contrast_noise not in self.noise_rates:
            raise ValueError(f"budget {self.name!r}: contrast_noise must be one of noise_rates")
        if 0.0 not in self.noise_rates:
            raise ValueError(f"budget {self.name!r}: the scaling study needs noise rate 0")


BUDGETS: dict[str, Budget] = {
    "full": Budget(
        "full",
        seeds=3,
        steps=250,
        train=1000,
        val=200,
        test=500,
        description="3 seeds, 250 steps of batch 32 (8 epochs of 1,000 clips); 69 runs, about "
        "80 minutes on 2 cores (measured 80.7 with 2 runs at a time: 1.5-3 minutes a run, the "
        "3 parameter-space runs 4.5)",
    ),
    "quick": Budget(
        "quick",
        seeds=2,
        steps=150,
        train=1000,
        val=200,
        test=500,
        description="2 seeds, 150 steps of batch 32; sized for about 45 minutes on 2 otherwise "
        "idle cores",
    ),
    "smoke": Budget(
        "smoke",
        seeds=1,
        steps=3,
        train=32,
        val=16,
        test=24,
        batch_size=8,
        noise_rates=(0.0, 0.4),
        checkpoint_every=2,
        eval_batch_size=32,
        description="1 seed, 3 steps, tiny data: keeps the pipeline working (numbers meaningless)",
    ),
}


@dataclass(frozen=True)
class DatasetSpec:
    """One shared dataset: built once, read by every run at its noise rate."""

    key: str
    noise: float
    extra: int
    extra_noise: float
    train: int
    val: int
    test: int
    seed: int = 0


@dataclass(frozen=True)
class RunSpec:
    """One training run (plus its evaluation)."""

    study: str
    """Which part of the study it belongs to: ablation, backbone, space or scaling."""
    variant: str
    noise: float
    seed: int
    dataset: str
    backbone: Backbone = "modality_agnostic"
    space: Space = "embedding"
    data: TrainData = "clean"

    @property
    def name(self) -> str:
        """Directory name; unique across the study, equal specs give equal names."""
        backbone = "agn" if self.backbone == "modality_agnostic" else "spe"
        space = "emb" if self.space == "embedding" else "par"
        data = "+extra" if self.data == "clean+extra" else ""
        return (
            f"{backbone}-{space}-{self.variant}-n{round(self.noise * 100):02d}{data}-s{self.seed}"
        )

    @property
    def config(self) -> str:
        return VARIANTS[self.variant]

    @property
    def ledger_from(self) -> str | None:
        """Name of the run whose ledger.csv this run reads (filtering), else None."""
        source = LEDGER_FROM.get(self.variant)
        return None if source is None else replace(self, variant=source).name

    def overrides(self, budget: Budget, runs_dir: Path) -> list[str]:
        """Config overrides on top of the variant's shipped config (runs live in `runs_dir`)."""
        out = [
            f"train.steps={budget.steps}",
            f"train.seed={self.seed}",
            f"train.checkpoint_every={min(budget.checkpoint_every, budget.steps)}",
            f"data.batch_size={budget.batch_size}",
            f"eval.max_samples={budget.val}",
            f"harmonize.space={self.space}",
            f"model.backbone.kind={self.backbone}",
        ]
        if self.ledger_from is not None:
            out.append(f"data.drop_suspects.ledger={runs_dir / self.ledger_from / LEDGER_CSV}")
        return out


@dataclass
class StudyPlan:
    """Datasets and runs of one budget."""

    budget: Budget
    datasets: list[DatasetSpec] = field(default_factory=list)
    runs: list[RunSpec] = field(default_factory=list)

    def by_study(self, study: str) -> list[RunSpec]:
        return [r for r in self.runs if r.study == study]


def dataset_key(noise: float) -> str:
    return f"noise{round(noise * 100):02d}"


def extra_view_key(key: str) -> str:
    """The clean+extra view of a dataset (its train and extra splits merged into `train`)."""
    return f"{key}+extra"


def make_plan(budget: Budget) -> StudyPlan:
    """Every dataset and run of the study for `budget`, in the order they should be run."""
    plan = StudyPlan(budget)
    for noise in budget.noise_rates:
        extra = budget.train if noise == 0.0 else 0  # the scaling study's second source
        plan.datasets.append(
            DatasetSpec(
                dataset_key(noise),
                noise=noise,
                extra=extra,
                extra_noise=budget.extra_noise,
                train=budget.train,
                val=budget.val,
                test=budget.test,
            )
        )
    seeds = range(budget.seeds)
    contrast = budget.contrast_noise
    # Seed-major order: an interrupted or time-boxed study has every cell at some seeds.
    for seed in seeds:
        for noise in budget.noise_rates:
            for variant in VARIANTS:
                plan.runs.append(RunSpec("ablation", variant, noise, seed, dataset_key(noise)))
        plan.runs.append(
            RunSpec("space", "gr", contrast, seed, dataset_key(contrast), space="parameters")
        )
        for variant in ("baseline", "gr+cl"):
            plan.runs.append(
                RunSpec(
                    "backbone",
                    variant,
                    contrast,
                    seed,
                    dataset_key(contrast),
                    backbone="modality_specific",
                )
            )
            plan.runs.append(
                RunSpec(
                    "scaling",
                    variant,
                    0.0,
                    seed,
                    extra_view_key(dataset_key(0.0)),
                    data="clean+extra",
                )
            )
    return plan

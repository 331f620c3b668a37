"""The training config: one typed, validated object with a section per concern.

Sections: ``data`` (dataset and loader), ``model`` (harmonia.models.ModelConfig), ``losses``,
``harmonize`` (Harmonizer method, space, curriculum, ledger, sampler), ``optim`` (AdamW and its
schedule), ``train`` (length, intervals, checkpoints, device), ``eval`` and ``distributed``
(torchrun). Shipped configs live in ``harmonia/configs/*.yaml`` and are named without the
extension (``demo``, ``vatt-base``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harmonia.data.config import BuildConfig
from harmonia.errors import ConfigError
from harmonia.harmonization.stats import NoisinessScore
from harmonia.losses.objective import LossSpec, default_specs
from harmonia.losses.temperature import DEFAULT_TEMPERATURE
from harmonia.models.config import ModelConfig
from harmonia.models.sizes import SIZES
from harmonia.typed_config import (
    FieldError,
    apply_overrides,
    check,
    deep_merge,
    from_dict,
    load_yaml_tree,
    require_non_negative,
    require_positive,
    require_range,
    suggest,
)

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class SuspectsConfig:
    """Train without the samples a previous run's ledger suspects most (the filtering route)."""

    ledger: str | None = None
    """A ledger.csv written by `harmonia train` on the same dataset."""
    fraction: float = 0.0
    """Share of the training split to leave out, most suspected first (0: keep everything)."""

    def validate(self) -> None:
        require_range(self, "fraction", 0.0, 1.0, high_open=True)


@dataclass
class VocabularyConfig:
    """Which words of the training captions get their own embedding (the rest: unknown).

    Real captions (ASR, alt-text) have a long tail of rare words; each kept word is a row of the
    text embedding, so large imports bound the vocabulary here.
    """

    min_count: int = 1
    """Keep a word only if it occurs at least this many times in the training captions."""
    max_words: int | None = None
    """Keep at most this many words, most frequent first (null: no limit)."""

    def validate(self) -> None:
        require_positive(self, "min_count")
        if self.max_words is not None:
            require_positive(self, "max_words")


@dataclass
class DataConfig:
    """Where the dataset is, how to build it when it is absent, and how batches are drawn."""

    dir: str = "data/avmnist-t"
    """Dataset directory (written by `harmonia data build`); built from `source` if absent."""
    source: str | None = None
    """Source media for building: a directory, "builtin", or null ($HARMONIA_DATA, the fetch
    cache, else the built-in set)."""
    build: BuildConfig = field(default_factory=BuildConfig)
    """Options of the build when `dir` does not exist (see `harmonia data build --help`)."""
    train_split: str = "train"
    val_split: str = "val"
    batch_size: int = 16
    num_workers: int = 0
    cache: bool = False
    """Keep decoded training samples in memory after their first decode (later epochs skip
    decoding). Each loader worker keeps its own copy: about frames x height x width x 3 +
    4 x audio samples bytes per sample and worker; use it when that fits."""
    drop_suspects: SuspectsConfig = field(default_factory=SuspectsConfig)
    vocabulary: VocabularyConfig = field(default_factory=VocabularyConfig)
    """The word vocabulary built from the training captions (a resumed or fine-tuned run keeps
    its checkpoint's)."""
    streaming: bool = False
    """Read the training shards in sequence (WebDataset: shards shuffled per epoch, split between
    ranks and workers, samples shuffled in a buffer) instead of by random access: for datasets
    too large to read at random. An epoch is the full batches of the poorest rank; a resumed run
    replays its epoch's batches up to the saved position (docs/training.md)."""
    stream_buffer: int = 1000
    """Encoded samples in the streaming shuffle buffer (1: no sample shuffle)."""
    train_shards: str | None = None
    """Stream the training shards from these URLs instead of the dataset's folder (with
    `streaming`), as open_clip's ``--train-data``: brace patterns
    (``/big/train-{000000..000099}.tar``), globs, ``pipe:`` commands
    (``pipe:aws s3 cp s3://bucket/train-{000000..000099}.tar -``), several joined by ``::``.
    The shards are in harmonia's format (copies of a dataset's training shards); the dataset
    folder still gives the media spec, the vocabulary (its training captions) and validation."""
    train_samples: int | None = None
    """The samples the `train_shards` hold, all ranks together (required with them): an epoch
    is train_samples // (ranks x batch_size) steps."""

    def validate(self) -> None:
        check(bool(self.dir), "dir", "expected a dataset directory, got ''")
        require_positive(self, "batch_size")
        require_non_negative(self, "num_workers")
        require_positive(self, "stream_buffer")
        if self.train_shards is not None:
            check(bool(self.train_shards.strip()), "train_shards", "expected shard URLs, got ''")
            check(
                self.streaming,
                "train_shards",
                "needs data.streaming: true (the shards at these URLs are read in sequence)",
            )
            check(
                self.train_samples is not None,
                "train_samples",
                "required with data.train_shards: the number of samples those shards hold "
                "(an epoch is train_samples // (ranks x batch_size) steps)",
            )
        if self.train_samples is not None:
            require_positive(self, "train_samples")
            check(
                self.train_shards is not None,
                "train_samples",
                "counts the samples of data.train_shards; the dataset's own shards are "
                "counted from its index",
            )
        check(
            not (self.streaming and self.cache),
            "cache",
            "keeps decoded samples for random access; data.streaming reads shards in order",
        )
        check(
            not (self.streaming and self.drop_suspects.fraction),
            "drop_suspects.fraction",
            "leaves samples out by random access; with data.streaming write a filtered copy "
            "instead (harmonia data filter)",
        )


@dataclass
class LossesConfig:
    """The contrastive losses; by default VATT's NCE(video, audio) and MIL-NCE(video, text)."""

    temperature: float = DEFAULT_TEMPERATURE
    learnable_temperature: bool = False
    specs: list[LossSpec] | None = None
    """Explicit losses (name, kind, space, modalities, ...); null: the default pair."""

    def validate(self) -> None:
        require_positive(self, "temperature")
        if self.specs is not None:
            check(len(self.specs) >= 1, "specs", "expected at least one loss")
            names = [s.name for s in self.specs]
            check(len(set(names)) == len(names), "specs", f"loss names must differ, got {names}")

    def resolved(self, model: ModelConfig) -> list[LossSpec]:
        """The losses to train ``model`` with."""
        if self.specs is not None:
            return list(self.specs)
        return list(default_specs(model, self.temperature, self.learnable_temperature))


@dataclass
class LedgerConfig:
    """The per-sample conflict ledger: EMA of each sample's conflict score, saved with the run."""

    enabled: bool = True
    decay: float = 0.9
    """Weight the EMA keeps on its past at each new observation."""
    prior: float = 0.0
    """Score reported for samples never seen."""
    conflict_threshold: float = 0.0
    """A score below this counts as a conflict."""
    score: NoisinessScore = "gradient_norm"
    """What is recorded per sample: ``gradient_norm`` (how much larger than the batch's a
    sample's largest per-loss gradient is), ``conflict`` (the paper's smallest cosine between
    the losses' gradients) or ``loss`` (how much larger than the batch's a sample's largest
    per-sample loss is; needs no gradients); all in [-1, 1], low = suspected misaligned
    (docs/curriculum.md)."""
    trace: bool = False
    """Also write every per-sample observation (losses, gradient Gram) to conflict_trace.csv."""

    def validate(self) -> None:
        require_range(self, "decay", 0.0, 1.0, high_open=True)
        require_range(self, "prior", -1.0, 1.0)
        require_range(self, "conflict_threshold", -1.0, 1.0)


@dataclass
class SamplerConfig:
    """The ledger-driven CurriculumSampler: cleaner samples first, uniform after the warm-up."""

    enabled: bool = False
    sharpness: float = 4.0
    """beta at the start: sample weight exp(beta * ledger score)."""
    warmup: float = 0.5
    """Fraction of training over which beta decays to 0."""
    shape: Literal["linear", "cosine"] = "linear"

    def validate(self) -> None:
        require_non_negative(self, "sharpness")
        require_range(self, "warmup", 0.0, 1.0)


@dataclass
class HarmonizeConfig:
    """How the two losses' gradients are combined: method `none` is the VATT baseline."""

    method: str = "none"
    space: Literal["embedding", "parameters", "batch"] = "embedding"
    options: dict[str, Any] = field(default_factory=dict)
    """Extra options of the method (e.g. gradvac's EMA rate)."""
    curriculum: dict[str, Any] | None = None
    """None, or {name: threshold|sigmoid|quantile, ...its options}."""
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)

    def validate(self) -> None:
        from harmonia.harmonization.methods import METHODS, build_method

        near = suggest(self.method, list(METHODS))
        hint = f" (did you mean '{near}'?)" if near and near != self.method else ""
        known = f"expected one of {', '.join(map(repr, METHODS))}, got {self.method!r}{hint}"
        check(self.method in METHODS, "method", known)
        try:
            build_method(self.method, **self.options)
        except (ValueError, TypeError) as err:
            raise FieldError("options", str(err)) from None
        per_sample = self.space != "batch"
        check(
            per_sample or self.curriculum is None,
            "curriculum",
            "needs per-sample conflict "
            "scores, which space 'batch' does not measure; use embedding or parameters",
        )
        check(
            per_sample or not self.sampler.enabled,
            "sampler.enabled",
            "needs per-sample conflict scores, which space 'batch' does not measure",
        )
        ok = not self.sampler.enabled or self.ledger.enabled
        check(
            ok, "sampler.enabled", "the sampler needs the ledger (harmonize.ledger.enabled: true)"
        )
        if self.curriculum is not None:
            options = dict(self.curriculum)
            name = options.pop("name", None)
            check(isinstance(name, str), "curriculum.name", "expected a curriculum name")
            from harmonia.harmonization.curriculum import build_curriculum

            try:
                build_curriculum(name, **options)
            except ConfigError as err:
                raise FieldError("curriculum", str(err)) from None


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay, and gradient-norm clipping."""

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0

    def validate(self) -> None:
        require_positive(self, "lr", "eps")
        require_non_negative(self, "weight_decay")
        for name in ("lr", "eps", "weight_decay"):  # AdamW keeps them as float32 on the device
            require_range(self, name, 0.0, FLOAT32_MAX)
        for i, beta in enumerate(self.betas):
            check(0.0 <= beta < 1.0, f"betas[{i}]", f"expected a float in [0, 1), got {beta}")
        require_range(self, "warmup_fraction", 0.0, 1.0)
        require_range(self, "min_lr_ratio", 0.0, 1.0)
        if self.grad_clip is not None:
            require_positive(self, "grad_clip")


FLOAT32_MAX = 3.4028234663852886e38
MAX_SEED = 2**32 - 1
"""Largest ``train.seed`` (NumPy's seed range; derived per-rank and per-step seeds stay < 2^63)."""


@dataclass
class TrainLoopConfig:
    """Length of the run, logging/eval/checkpoint intervals, seed and device."""

    steps: int = 100
    log_every: int = 10
    eval_every: int = 0
    """Validation every N steps (0: only at the end)."""
    checkpoint_every: int = 50
    keep_last: int = 2
    seed: int = 0
    max_bad_steps: int = 5
    """Stop after this many consecutive steps with a non-finite loss or gradient."""
    device: str = "auto"
    """auto (CUDA when available), cpu, cuda or cuda:N."""
    bf16: bool = True
    """bfloat16 autocast for the forward pass on CUDA (ignored on CPU)."""
    keep_freed_memory: bool = True
    """CPU runs: keep freed memory in the process for the next step (`harmonia.allocator`)."""
    progress: bool = True

    def validate(self) -> None:
        require_positive(self, "steps", "log_every", "checkpoint_every", "keep_last")
        require_range(self, "seed", 0, MAX_SEED)
        require_positive(self, "max_bad_steps")
        require_non_negative(self, "eval_every", "seed")
        ok = self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")
        check(ok, "device", f"expected auto, cpu, cuda or cuda:N, got {self.device!r}")


@dataclass
class DistributedConfig:
    """How `harmonia train` runs under torchrun (ignored by a single process).

    ``data.batch_size`` is per process: the global batch is ``world size x batch_size``, and
    every loss takes its negatives from the whole global batch.
    """

    strategy: Literal["ddp", "fsdp"] = "ddp"
    """ddp (DistributedDataParallel) or fsdp (FSDP2 ``fully_shard`` of each transformer block)."""
    timeout_s: float = 1800.0
    """Seconds a process waits for the others in a collective before it fails."""

    def validate(self) -> None:
        require_positive(self, "timeout_s")


@dataclass
class EvalConfig:
    """The periodic validation pass (retrieval loss and R@1 on the validation split)."""

    batch_size: int = 64
    max_samples: int | None = 512

    def validate(self) -> None:
        require_positive(self, "batch_size")
        if self.max_samples is not None:
            require_positive(self, "max_samples")


@dataclass
class TrainConfig:
    """Everything a training run needs, resolved and validated."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig.named("tiny"))
    losses: LossesConfig = field(default_factory=LossesConfig)
    harmonize: HarmonizeConfig = field(default_factory=HarmonizeConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def validate(self) -> None:
        check(
            not (self.data.streaming and self.harmonize.sampler.enabled),
            "harmonize.sampler.enabled",
            "draws samples by random access; data.streaming reads shards in order (turn one off)",
        )

    def replace(self, **sections: Any) -> TrainConfig:
        """A copy with whole sections replaced."""
        return dataclasses.replace(self, **sections)


def shipped_configs() -> list[str]:
    """Names of the configs shipped with harmonia."""
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))


def config_path(name_or_path: str | Path) -> Path:
    """A shipped config's file from its name, or the given path if it is a file."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = CONFIGS_DIR / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    near = suggest(str(name_or_path), shipped_configs())
    hint = f" (did you mean '{near}'?)" if near else ""
    raise ConfigError(
        f"no config file {str(name_or_path)!r} and no shipped config of that name{hint}; "
        f"shipped: {', '.join(shipped_configs())}"
    )


def _resolve_base(name: str, including: Path) -> Path:
    beside = including.parent / name
    return beside if beside.is_file() else config_path(name)


def load_train_config(name_or_path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Load a shipped config by name or a YAML file by path, with ``key=value`` overrides.

    ``model.size`` (tiny, small, base) expands into that size's full model config, with any
    other ``model.*`` keys merged over it: ``model.size=small model.backbone.depth=2``.
    """
    data = load_yaml_tree(config_path(name_or_path), _resolve_base)
    return train_config_from_dict(apply_overrides(data, overrides))


def train_config_from_dict(data: Mapping[str, Any]) -> TrainConfig:
    """Validate plain config data (e.g. a run's config.yaml) into a TrainConfig."""
    return from_dict(TrainConfig, expand_model_size(data))


def expand_model_size(data: Mapping[str, Any]) -> dict[str, Any]:
    """Replace ``model.size: NAME`` by the named size's model config (other keys merged over)."""
    out = dict(data)
    model = out.get("model")
    if not isinstance(model, Mapping) or "size" not in model:
        return out
    rest = dict(model)
    size = rest.pop("size")
    if not isinstance(size, str) or size not in SIZES:
        near = suggest(str(size), list(SIZES))
        hint = f" (did you mean '{near}'?)" if near else ""
        raise ConfigError(f"model.size: unknown size {size!r}{hint}; known: {', '.join(SIZES)}")
    out["model"] = deep_merge(SIZES[size], rest)
    return out

"""The parts of a training run, built from its config in the order the run's seed expects.

`build_run` turns a `TrainConfig` into a `TrainingRun`: the dataset and its splits, VATT, the
losses, the Harmonizer, the conflict ledger and the sampler it drives, the batch stream, AdamW
with its schedule and the bad-step guard. The loop (`loop.py`), the step (`step.py`) and
save / restore (`run_state.py`) read their parts from it. The order of construction is part
of bit-exact resume: the model's initialization draws from the run's seed, and every rank
after the first reseeds its generator (its own DropToken draws) once the model exists.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harmonia.data.shard_urls import ShardUrlError, expand_urls
from harmonia.data.streaming import StreamingDataset
from harmonia.errors import ConfigError, DataError
from harmonia.harmonization import Harmonizer
from harmonia.harmonization.curriculum import build_curriculum
from harmonia.harmonization.ledger import ConflictLedger
from harmonia.harmonization.sampler import CurriculumSampler
from harmonia.losses import ContrastiveObjective
from harmonia.models import VATT, WordTokenizer
from harmonia.training import data as train_data
from harmonia.training.batches import BatchStream, ResumableSampler
from harmonia.training.checkpoint import Checkpoint
from harmonia.training.config import HarmonizeConfig, TrainConfig
from harmonia.training.distributed import (
    DistributedContext,
    check_supported,
    is_sharded,
    wrap_model,
)
from harmonia.training.guard import BadStepGuard
from harmonia.training.partition import RankEpochSampler
from harmonia.training.resume import check_saved_model
from harmonia.training.schedule import WarmupCosine
from harmonia.training.stream import StreamBatches

RANK_SEED_STRIDE = 1_000_003
"""Rank r > 0 seeds its generator with ``seed + r * RANK_SEED_STRIDE`` after building the model."""


@dataclass
class Progress:
    """Where the run is: steps done of the total, this rank's skipped samples, time spent."""

    step: int
    total: int
    skipped: list[dict[str, str]] = field(default_factory=list)
    """This rank's corrupt samples (rank 0: also those of the checkpoints it resumed)."""
    elapsed_before: float = 0.0
    """Seconds spent by the run before this process started (restored from a checkpoint)."""
    started: float = field(default_factory=time.time)

    @property
    def fraction(self) -> float:
        """The fraction of training done, in [0, 1] (curricula and the sampler read it)."""
        return min(self.step / self.total, 1.0)

    @property
    def elapsed(self) -> float:
        """Seconds spent by the whole run so far."""
        return self.elapsed_before + time.time() - self.started


@dataclass
class TrainingRun:
    """Everything a training run holds, built once by `build_run`."""

    cfg: TrainConfig
    run_dir: Path
    ctx: DistributedContext
    device: torch.device
    progress: Progress
    dataset_dir: Path
    dropped: list[str]
    """Training ids left out as suspects (``data.drop_suspects``)."""
    val_batches: Callable[[], Iterable[Mapping[str, Any]]] | None
    val_skipped: dict[str, dict[str, str]]
    """Corrupt validation samples by key (every validation reads the same subset)."""
    net: VATT
    """The plain model (before any DDP / FSDP2 wrapping)."""
    model: nn.Module
    """``net`` as wrapped for data-parallel training (``net`` itself in one process)."""
    encoder: nn.Module
    """The anchor encoder, whose gradient the Harmonizer realigns."""
    objective: ContrastiveObjective
    harmonizer: Harmonizer
    ledger: ConflictLedger | None
    stream: BatchStream | StreamBatches
    optimizer: torch.optim.Optimizer
    trainable: list[nn.Parameter]
    schedule: WarmupCosine
    clip: float
    guard: BadStepGuard

    @property
    def sharded(self) -> bool:
        """FSDP2: the model's and the optimizer's state are gathered from the shards."""
        return is_sharded(self.model)

    @property
    def stateful(self) -> nn.Module:
        """The module that holds every parameter of the optimizer (for sharded state)."""
        if not self.sharded:
            return self.model
        return nn.ModuleDict({"model": self.model, "objective": self.objective})

    def autocast(self) -> Any:
        """bfloat16 autocast on CUDA with ``train.bf16``; a no-op context elsewhere."""
        if self.cfg.train.bf16 and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()


def build_run(
    cfg: TrainConfig,
    run_dir: Path,
    ctx: DistributedContext,
    *,
    data_dir: str | Path | None,
    checkpoint: Checkpoint | None,
) -> TrainingRun:
    """The run's parts from ``cfg``: fresh, or shaped like ``checkpoint`` (restore it next)."""
    device = ctx.device
    torch.manual_seed(cfg.train.seed)
    progress = Progress(step=0 if checkpoint is None else checkpoint.step, total=cfg.train.steps)

    # ---- data: the dataset (rank 0 builds it if absent), its training split, a validation subset
    dataset_dir = ctx.run_on_main(
        lambda: train_data.ensure_dataset(cfg.data, data_dir, progress=cfg.train.progress)
    )
    dropped = train_data.suspects_to_drop(cfg.data.drop_suspects, dataset_dir, cfg.data.train_split)
    if dropped and ctx.is_main:
        print(f"leaving out {len(dropped)} suspects named by {cfg.data.drop_suspects.ledger}")
    train_set = (
        None
        if cfg.data.streaming
        else train_data.open_split(
            dataset_dir, cfg.data.train_split, cache=cfg.data.cache, exclude=dropped
        )
    )
    if cfg.data.train_samples is not None:
        size, where = cfg.data.train_samples, "data.train_samples"
    else:
        size = (
            len(train_set)
            if train_set is not None
            else train_data.split_size(dataset_dir, cfg.data.train_split)
        )
        where = f"samples of split '{cfg.data.train_split}' in {dataset_dir}"
    if size < cfg.data.batch_size * ctx.world_size:
        per = f" x {ctx.world_size} processes" if ctx.is_distributed else ""
        raise ConfigError(
            f"data.batch_size: {cfg.data.batch_size}{per} is more than the {size} {where}"
        )
    train_data.check_model_inputs(dataset_dir, cfg.model)
    val_skipped: dict[str, dict[str, str]] = {}
    val_batches = train_data.validation_batches(
        dataset_dir,
        cfg.data.val_split,
        cfg.eval,
        cfg.data.num_workers,
        on_skipped=lambda items: val_skipped.update((item["key"], item) for item in items),
    )

    # ---- model (vocabulary from the training captions), losses, harmonizer, ledger
    if checkpoint is None:
        captions = train_data.split_captions(dataset_dir, cfg.data.train_split)
        if not captions and cfg.data.train_shards is not None:
            raise DataError(
                f"data.train_shards: the vocabulary is built from the captions of split "
                f"'{cfg.data.train_split}' in {dataset_dir}, and none could be read there: keep "
                "that split's shards in the dataset folder too"
            )
        words = cfg.data.vocabulary
        tokenizer = WordTokenizer.build(
            captions, min_count=words.min_count, max_words=words.max_words
        )
        net = VATT(cfg.model, tokenizer)
    else:
        net = VATT.from_pretrained(checkpoint.path)
        check_saved_model(net, cfg, checkpoint.path)
    net.to(device)
    if ctx.rank:  # the same initial weights everywhere, but each rank its own DropToken draws
        torch.manual_seed(cfg.train.seed + RANK_SEED_STRIDE * ctx.rank)
    encoder = net.anchor_encoder()
    check_supported(cfg.distributed.strategy, cfg.harmonize.space)
    model = wrap_model(net, ctx, cfg.distributed.strategy)
    objective = ContrastiveObjective(cfg.losses.resolved(cfg.model), gather=ctx.gather).to(device)
    harmonizer = build_harmonizer(cfg.harmonize, cfg.train.seed)
    options = cfg.harmonize.ledger
    ledger = (
        ConflictLedger(options.decay, options.prior, options.conflict_threshold)
        if options.enabled
        else None
    )

    # ---- batches: the ledger-driven sampler or a plain shuffle, each rank its share, resumable
    stream: BatchStream | StreamBatches
    sampler: ResumableSampler
    if train_set is None:
        stream = _streamed(cfg, dataset_dir, ctx)
    elif ledger is not None and cfg.harmonize.sampler.enabled:
        s = cfg.harmonize.sampler
        sampler = CurriculumSampler(
            train_set.ids,
            ledger,
            sharpness=s.sharpness,
            warmup=s.warmup,
            shape=s.shape,
            seed=cfg.train.seed,
            rank=ctx.rank,
            world_size=ctx.world_size,
        )
    else:
        sampler = RankEpochSampler(len(train_set), cfg.train.seed, ctx.rank, ctx.world_size)
    if train_set is not None:
        stream = BatchStream(
            train_set,
            sampler,
            batch_size=cfg.data.batch_size,
            collate_fn=train_data.collate_for(train_set),
            num_workers=cfg.data.num_workers,
            seed=cfg.train.seed,
            pin_memory=device.type == "cuda",
            progress=lambda: progress.fraction,
        )

    # ---- AdamW with warm-up + cosine, gradient clipping, the NaN/Inf guard
    o = cfg.optim
    optimizer = torch.optim.AdamW(
        param_groups(model, objective, weight_decay=o.weight_decay),
        lr=o.lr,
        betas=o.betas,
        eps=o.eps,
    )
    return TrainingRun(
        cfg=cfg,
        run_dir=run_dir,
        ctx=ctx,
        device=device,
        progress=progress,
        dataset_dir=dataset_dir,
        dropped=dropped,
        val_batches=val_batches,
        val_skipped=val_skipped,
        net=net,
        model=model,
        encoder=encoder,
        objective=objective,
        harmonizer=harmonizer,
        ledger=ledger,
        stream=stream,
        optimizer=optimizer,
        trainable=[p for p in (*model.parameters(), *objective.parameters()) if p.requires_grad],
        schedule=WarmupCosine(
            o.lr,
            cfg.train.steps,
            o.warmup_fraction,
            min_ratio=o.min_lr_ratio,
            cosine=o.schedule == "cosine",
        ),
        clip=o.grad_clip if o.grad_clip is not None else math.inf,
        guard=BadStepGuard(cfg.train.max_bad_steps),
    )


def _streamed(cfg: TrainConfig, root: Path, ctx: DistributedContext) -> StreamBatches:
    """The training split read in sequence: shards per rank and worker, a shuffle buffer;
    the shards of ``data.train_shards`` when the user gave URLs."""
    urls = None
    if cfg.data.train_shards is not None:
        try:
            urls = expand_urls(cfg.data.train_shards)
        except ShardUrlError as err:
            raise ConfigError(f"data.train_shards: {err}") from None
    dataset = StreamingDataset(
        root,
        cfg.data.train_split,
        batch_size=cfg.data.batch_size,
        buffer=cfg.data.stream_buffer,
        seed=cfg.train.seed,
        urls=urls,
        num_samples=cfg.data.train_samples,
    )
    try:
        return StreamBatches(
            dataset,
            world_size=ctx.world_size,
            num_workers=cfg.data.num_workers,
            seed=cfg.train.seed,
            pin_memory=ctx.device.type == "cuda",
        )
    except ValueError as err:
        field = "data.streaming" if urls is None else "data.train_shards"
        raise ConfigError(f"{field}: {err}") from None


def with_data_dir(cfg: TrainConfig, data_dir: str | Path | None) -> TrainConfig:
    """``cfg`` reading its dataset from ``data_dir`` (recorded in RUN/config.yaml, where
    evaluation looks for the data)."""
    if data_dir is None:
        return cfg
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dir=str(data_dir)))


def build_harmonizer(cfg: HarmonizeConfig, seed: int) -> Harmonizer:
    """The Harmonizer of the config: method, space, optional curriculum, method options."""
    curriculum = None
    if cfg.curriculum is not None:
        options = dict(cfg.curriculum)
        curriculum = build_curriculum(options.pop("name"), **options)
    try:
        return Harmonizer(
            method=cfg.method, space=cfg.space, curriculum=curriculum, seed=seed, **cfg.options
        )
    except ValueError as err:
        raise ConfigError(f"harmonize: {err}") from None


def param_groups(*modules: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on weight matrices, none on biases, norms and scalars."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for module in modules:
        for param in module.parameters():
            if param.requires_grad:
                (decay if param.dim() >= 2 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]

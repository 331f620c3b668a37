"""The training loop: data -> VATT -> contrastive losses -> Harmonizer -> AdamW, top to bottom.

Every harmonization method takes the same path: the Harmonizer's backward replaces
``sum(losses).backward()`` (method ``none`` is the VATT baseline), so there is one training step
for all of them. A run directory receives the resolved config, metrics (JSONL + TensorBoard),
atomic checkpoints, and at the end the model, the conflict ledger and a summary. ``resume``
continues from the newest checkpoint exactly: same batches, same random numbers, same
optimizer state, so on CPU 2N steps equal N steps + resume + N steps bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from harmonia.config import to_dict, to_yaml
from harmonia.errors import ConfigError, DistributedError, HarmoniaError, first_line
from harmonia.files import write_atomic
from harmonia.harmonization import Harmonizer
from harmonia.harmonization.curriculum import build_curriculum
from harmonia.harmonization.ledger import ConflictLedger
from harmonia.harmonization.sampler import CurriculumSampler
from harmonia.harmonization.stats import noisiness_scores
from harmonia.losses import ContrastiveObjective, local_gather
from harmonia.models import VATT, WordTokenizer
from harmonia.training import data as train_data
from harmonia.training.batches import BatchStream, LoaderFailure, ResumableSampler
from harmonia.training.checkpoint import (
    latest_checkpoint,
    restoring,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from harmonia.training.config import (
    HarmonizeConfig,
    LedgerConfig,
    TrainConfig,
    load_train_config,
)
from harmonia.training.distributed import (
    DistributedContext,
    by_name,
    check_supported,
    clip_gradients,
    full_model_state,
    full_optimizer_state,
    is_collective_failure,
    is_sharded,
    load_optimizer_state,
    wrap_model,
)
from harmonia.training.guard import BadStepGuard, weights_error, weights_finite
from harmonia.training.health import learning_health
from harmonia.training.layout import LEDGER_CSV, TRACE_CSV
from harmonia.training.lock import run_lock
from harmonia.training.logging import MetricAccumulator, MetricLogger
from harmonia.training.partition import RankEpochSampler
from harmonia.training.resume import (
    CONFIG_FILE,
    MODEL_DIR,
    SUMMARY_FILE,
    check_saved_model,
    checkpoint_to_resume,
    finished_summary,
    rank_state,
    refuse_to_overwrite,
    saved_ledger,
)
from harmonia.training.schedule import WarmupCosine
from harmonia.training.signals import StopRequest
from harmonia.training.trace import ConflictTrace
from harmonia.training.validation import validate

RANK_SEED_STRIDE = 1_000_003
"""Rank r > 0 seeds its generator with ``seed + r * RANK_SEED_STRIDE`` after building the model."""


def train_named(
    config: str | Path,
    out: str | Path,
    overrides: Sequence[str] = (),
    *,
    data_dir: str | Path | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train from a shipped config name (e.g. ``demo``) or a YAML path into the run dir ``out``."""
    cfg = load_train_config(config, overrides)
    return train(cfg, out, data_dir=data_dir, resume=resume)


def train(
    cfg: TrainConfig,
    out: str | Path,
    *,
    data_dir: str | Path | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train from ``cfg`` into the run directory ``out``; returns what RUN/summary.json holds.

    Under torchrun every process calls this: the processes share one global batch (each
    contributes ``data.batch_size`` samples and takes its negatives from all of them), and
    rank 0 writes the run directory. ``resume`` continues from the newest checkpoint, or
    starts the run if it has none yet (so a restarted job can always pass it).
    """
    run_dir = Path(out)
    if data_dir is not None:  # recorded in RUN/config.yaml, where evaluation looks for the data
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dir=str(data_dir)))
    device = resolve_device(cfg.train.device)
    with (
        DistributedContext.from_env(device.type, timeout_s=cfg.distributed.timeout_s) as ctx,
        run_lock(run_dir, enabled=ctx.is_main),
    ):
        try:
            where = ctx.device if ctx.is_distributed else device
            return _train(cfg, run_dir, ctx, where, data_dir=data_dir, resume=resume)
        except RuntimeError as err:
            if not ctx.is_distributed or not is_collective_failure(err):
                raise
            raise DistributedError(_lost_peer(ctx, err, run_dir)) from err


def _train(
    cfg: TrainConfig,
    run_dir: Path,
    ctx: DistributedContext,
    device: torch.device,
    *,
    data_dir: str | Path | None,
    resume: bool,
) -> dict[str, Any]:
    started = time.time()
    main = ctx.is_main
    checkpoint = checkpoint_to_resume(run_dir, cfg, main) if resume else None
    if checkpoint is None:
        refuse_to_overwrite(run_dir)
    elif (done := finished_summary(run_dir, cfg.train.steps)) is not None:
        if main:  # e.g. a requeued job that always passes --resume: keep its results as they are
            print(f"{run_dir} already finished {done['steps']} steps; nothing to do")
        return {**done, "rank": ctx.rank}
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.train.seed)
    steps = cfg.train.steps
    step = 0 if checkpoint is None else checkpoint.step

    # ---- data: the dataset (rank 0 builds it if absent), its training split, a validation subset
    dataset_dir = ctx.run_on_main(
        lambda: train_data.ensure_dataset(cfg.data, data_dir, progress=cfg.train.progress)
    )
    dropped = train_data.suspects_to_drop(cfg.data.drop_suspects, dataset_dir, cfg.data.train_split)
    if dropped and main:
        print(f"leaving out {len(dropped)} suspects named by {cfg.data.drop_suspects.ledger}")
    train_set = train_data.open_split(
        dataset_dir, cfg.data.train_split, cache=cfg.data.cache, exclude=dropped
    )
    if len(train_set) < cfg.data.batch_size * ctx.world_size:
        per = f" x {ctx.world_size} processes" if ctx.is_distributed else ""
        raise ConfigError(
            f"data.batch_size: {cfg.data.batch_size}{per} is more than the {len(train_set)} "
            f"samples of split '{cfg.data.train_split}' in {dataset_dir}"
        )
    train_data.check_model_inputs(dataset_dir, cfg.model)
    val_skipped: dict[str, dict[str, str]] = {}  # by key: validation reads the same subset
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
        net = VATT(cfg.model, WordTokenizer.build(captions))
    else:
        net = VATT.from_pretrained(checkpoint.path)
        check_saved_model(net, cfg, checkpoint.path)
    net.to(device)
    if ctx.rank:  # the same initial weights everywhere, but each rank its own DropToken draws
        torch.manual_seed(cfg.train.seed + RANK_SEED_STRIDE * ctx.rank)
    encoder = net.anchor_encoder()
    check_supported(cfg.distributed.strategy, cfg.harmonize.space, encoder)
    model = wrap_model(net, ctx, cfg.distributed.strategy)  # the net itself in one process
    objective = ContrastiveObjective(cfg.losses.resolved(), gather=ctx.gather).to(device)
    harmonizer = build_harmonizer(cfg.harmonize, cfg.train.seed)
    ledger = None
    if cfg.harmonize.ledger.enabled:
        options = cfg.harmonize.ledger
        ledger = ConflictLedger(options.decay, options.prior, options.conflict_threshold)

    # ---- batches: the ledger-driven sampler or a plain shuffle, each rank its share, resumable
    sampler: ResumableSampler
    if ledger is not None and cfg.harmonize.sampler.enabled:
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
    stream = BatchStream(
        train_set,
        sampler,
        batch_size=cfg.data.batch_size,
        collate_fn=train_data.collate_for(train_set),
        num_workers=cfg.data.num_workers,
        seed=cfg.train.seed,
        pin_memory=device.type == "cuda",
        progress=lambda: min(step / steps, 1.0),
    )

    # ---- AdamW with warm-up + cosine, gradient clipping, the NaN/Inf guard
    o = cfg.optim
    trainable = [p for p in (*model.parameters(), *objective.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(
        param_groups(model, objective, weight_decay=o.weight_decay),
        lr=o.lr,
        betas=o.betas,
        eps=o.eps,
    )
    sharded = is_sharded(model)  # FSDP2: optimizer and model state gathered from the shards
    parts = torch.nn.ModuleDict({"model": model, "objective": objective}) if sharded else model
    schedule = WarmupCosine(
        o.lr, steps, o.warmup_fraction, min_ratio=o.min_lr_ratio, cosine=o.schedule == "cosine"
    )
    clip = o.grad_clip if o.grad_clip is not None else math.inf
    guard = BadStepGuard(cfg.train.max_bad_steps)
    skipped: list[dict[str, str]] = []  # this rank's corrupt samples (rank 0: also the saved ones)
    elapsed_before = 0.0

    if checkpoint is not None:
        with restoring(checkpoint.path):
            state = checkpoint.state
            objective.load_state_dict(state["objective"])
            if sharded:
                saved = by_name(state["optimizer"], parts, optimizer)  # e.g. saved under DDP
                load_optimizer_state(parts, optimizer, saved)
            else:
                optimizer.load_state_dict(state["optimizer"])
            harmonizer.load_state_dict(state["harmonizer"])
            if ledger is not None:
                ledger.load_state_dict(saved_ledger(checkpoint), source=str(checkpoint.path))
            stream.load_state_dict(rank_state(state, "data", ctx))
            guard.load_state_dict(state["guard"])
            skipped = list(state["skipped"]) if main else []
            elapsed_before = float(state["elapsed"])
            rng = rank_state(state, "rng", ctx)  # last: the above may draw random numbers
            if rng is not None:
                set_rng_state(rng)
            else:  # another world size: fresh per-rank streams (DropToken)
                torch.manual_seed(cfg.train.seed + RANK_SEED_STRIDE * ctx.rank + step)
    if main:
        write_atomic(run_dir / CONFIG_FILE, to_yaml(cfg))

    def save(at_step: int) -> Path:
        ranks = ctx.all_gather_object(
            {"rng": rng_state(), "data": stream.state_dict(), "skipped": skipped}
        )
        weights = full_model_state(model) if sharded else None
        optimizer_state = (
            full_optimizer_state(parts, optimizer) if sharded else optimizer.state_dict()
        )
        state = {
            "config": to_dict(cfg),
            "objective": objective.state_dict(),
            "optimizer": optimizer_state,
            "harmonizer": harmonizer.state_dict(),
            "data": [r["data"] for r in ranks],  # per rank: each draws its own share
            "guard": guard.state_dict(),
            "skipped": [item for r in ranks for item in r["skipped"]],
            "elapsed": elapsed_before + time.time() - started,
            "rng": [r["rng"] for r in ranks],
            "world_size": ctx.world_size,
        }
        return ctx.run_on_main(
            lambda: save_checkpoint(
                run_dir,
                at_step,
                model=net if weights is None else _plain_copy(net, weights),
                state=state,
                ledger=None if ledger is None else ledger.state_dict(),
                keep_last=cfg.train.keep_last,
            )
        )

    # ---- the loop
    autocast = bf16_autocast(device, cfg.train.bf16)
    metrics = MetricAccumulator()
    last_row: dict[str, float] = {}
    stopped_by: str | None = None
    busy, samples, steps_done = 0.0, 0, 0  # since the last log row
    bar = tqdm(
        total=steps,
        initial=step,
        disable=not (cfg.train.progress and main),
        desc="train",
        unit="step",
    )
    logger = MetricLogger(run_dir, resume_step=step if resume else None) if main else None
    trace_on = cfg.harmonize.ledger.trace
    trace = (
        ConflictTrace(run_dir / TRACE_CSV, [s.name for s in objective.specs])
        if trace_on and main
        else None
    )
    with (
        StopRequest() as stop,
        logger or nullcontext(),
        closing(stream),
        bar,
        closing(trace) if trace is not None else nullcontext(),
    ):
        model.train()
        while step < steps:
            tick = time.perf_counter()
            try:
                batch = next(stream)  # loader workers ignore stop signals: the step finishes
            except LoaderFailure as err:
                raise _loader_stopped(
                    err,
                    step,
                    saved=step % cfg.train.checkpoint_every == 0,
                    save=None if ctx.is_distributed else save,
                ) from None
            skipped.extend(batch["skipped"])
            ids = list(batch["id"])
            if ctx.any_rank(len(ids) < 2):  # all of a batch was corrupt: nothing to contrast
                continue

            with harmonizer.capture(encoder), autocast:
                output = model(batch)
                per_sample = objective(output)
                losses = objective.reduce(per_sample, output)
            values = {name: float(loss.detach()) for name, loss in losses.items()}
            optimizer.zero_grad(set_to_none=True)
            lr = schedule(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            stats, grad_norm = None, math.nan
            harmonizer_state = harmonizer.state_dict()  # a skipped step must not move it
            if not ctx.any_rank(not guard.is_finite(values.values())):
                stats = harmonizer.backward(
                    losses, output.anchor, encoder=encoder, sample_ids=ids, progress=step / steps
                )
                ctx.average_gradients(objective.parameters())  # DDP averages the model's
                grad_norm = clip_gradients(trainable, clip)
            ok = math.isfinite(grad_norm)  # the same on every rank: gradients are reduced
            if ok:
                optimizer.step()
                if ctx.any_rank(not weights_finite(trainable)):
                    raise weights_error(step + 1, latest_checkpoint(run_dir))
                ctx.sync_harmonizer(harmonizer)
                if stats is not None and len(stats.gram) == len(ids):
                    record_observations(
                        ctx, ledger, trace, cfg.harmonize.ledger, step, ids, per_sample, stats.gram
                    )
            else:
                optimizer.zero_grad(set_to_none=True)
                harmonizer.load_state_dict(harmonizer_state)
                if main:
                    tqdm.write(f"step {step + 1}: non-finite loss or gradient {values}; skipped")
            step += 1
            bar.update(1)
            busy += time.perf_counter() - tick
            samples += len(ids)
            steps_done += 1

            # ---- metrics: averaged over the steps since the last row (and over the ranks)
            scalars = {f"loss/{name}": v for name, v in values.items()}
            scalars.update({"loss/total": sum(values.values()), "lr": lr, "grad_norm": grad_norm})
            scalars.update({"bad_step": float(not ok), "skipped": float(len(batch["skipped"]))})
            if ok and stats is not None:
                scalars.update(stats.to_metrics())
                cosines = stats.cosines.detach().float().cpu()
                for k, first in enumerate(stats.names):
                    for m in range(k + 1, len(stats.names)):
                        metrics.add_values(f"hist/{first}~{stats.names[m]}", cosines[:, k, m])
            metrics.add(scalars)
            row: dict[str, float] = {}
            hists: dict[str, torch.Tensor] = {}
            if step % cfg.train.log_every == 0 or step == steps:
                row.update(metrics.means())
                row["throughput"] = samples * ctx.world_size / max(busy, 1e-9)
                row["step_time"] = busy / max(steps_done, 1)
                row["data_wait"] = stream.take_wait() / max(busy, 1e-9)
                row = ctx.mean(row)
                hists = _merged(ctx.all_gather_object(metrics.histograms()))
                metrics.reset()
                busy, samples, steps_done = 0.0, 0, 0
                bar.set_postfix(loss=f"{row.get('loss/total', math.nan):.3f}", lr=f"{lr:.2e}")
            every = cfg.train.eval_every
            if val_batches is not None and ((every and step % every == 0) or step == steps):
                with _local_negatives(objective):  # every rank validates the same batches
                    row.update(validate(model, objective, val_batches(), autocast=autocast))
            if row and logger is not None:
                logger.log(step, row, hists)
            last_row.update(row)

            # ---- checkpoints, the NaN/Inf stop, a stop signal (on any rank: all stop)
            if guard.update(ok):
                raise guard.error(step, save(step))
            stopping = ctx.any_rank(stop.requested) and step < steps
            if stopping or step % cfg.train.checkpoint_every == 0 or step == steps:
                checkpoint_path = save(step)
            if stopping:
                by = stop.signal_name or "a stop on another rank"
                stopped_by = _stop(by, checkpoint_path, step, echo=main)
                break

    finished = step >= steps and stopped_by is None
    weights = full_model_state(model) if finished and sharded else None
    all_skipped = [item for items in ctx.all_gather_object(skipped) for item in items]
    summary = {
        "status": "finished" if finished else f"stopped by {stopped_by}",
        "steps": step,
        "target_steps": steps,
        "time_s": elapsed_before + time.time() - started,
        "bad_steps": guard.total,
        "skipped_samples": len(all_skipped),
        "skipped": all_skipped,
        "dropped_suspects": len(dropped),
        "skipped_validation": list(val_skipped.values()),
        "final_metrics": last_row,
        "learning": {
            name: health.to_dict()
            for name, health in learning_health(
                last_row, cfg.data.batch_size * ctx.world_size, cfg.eval.batch_size
            ).items()
        },
        "dataset": str(dataset_dir),
        "device": str(device),
        "world_size": ctx.world_size,
        "rank": ctx.rank,
    }

    def finish() -> None:
        if finished:
            (net if weights is None else _plain_copy(net, weights)).save_pretrained(
                run_dir / MODEL_DIR
            )
            if ledger is not None:
                ledger.to_csv(run_dir / LEDGER_CSV)
        write_atomic(run_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")

    ctx.run_on_main(finish)
    return summary


def record_observations(
    ctx: DistributedContext,
    ledger: ConflictLedger | None,
    trace: ConflictTrace | None,
    options: LedgerConfig,
    step: int,
    ids: list[str],
    per_sample: Mapping[str, torch.Tensor],
    gram: torch.Tensor,
) -> None:
    """Fold one step's per-sample Grams into the ledger (and the trace), over every rank's samples.

    The scores are computed on the global batch (the ``gradient_norm`` score compares each
    sample with the batch median), so ledgers, and the curriculum sampler's draws, are the same
    on every rank and equal to one process's.
    """
    if ledger is None and not options.trace:
        return
    keep_losses = options.trace or options.score == "loss"
    losses = {n: v.detach().cpu() for n, v in per_sample.items()} if keep_losses else {}
    gathered = ctx.all_gather_object((ids, losses, gram.cpu()))
    all_ids = [sample_id for rank_ids, _, _ in gathered for sample_id in rank_ids]
    all_grams = torch.cat([g for _, _, g in gathered])
    if ledger is not None:
        all_losses = (
            torch.cat([torch.stack(list(r.values()), dim=1) for _, r, _ in gathered])
            if options.score == "loss"
            else None
        )
        scores = noisiness_scores(all_grams, options.score, losses=all_losses)
        ledger.update(all_ids, scores, step)
    if trace is not None:
        for rank_ids, rank_losses, rank_gram in gathered:
            trace.write(step, rank_ids, rank_losses, rank_gram)


def _loader_stopped(
    err: LoaderFailure, step: int, *, saved: bool, save: Callable[[int], Path] | None
) -> LoaderFailure:
    """The loader's one-line error, with a checkpoint of the steps done since the last one.

    Under torchrun the other ranks are inside a step or a collective, so only a single process
    saves; the run resumes from its newest checkpoint once the cause is fixed.
    """
    if saved or save is None:
        return err
    return LoaderFailure(
        f"{err}; checkpoint of step {step} written to {save(step)}; fix the "
        "cause, then resume with --resume"
    )


def _stop(signal_name: str | None, checkpoint: Path, step: int, *, echo: bool = True) -> str:
    if echo:
        tqdm.write(
            f"{signal_name}: checkpoint of step {step} written to {checkpoint}; "
            "resume with --resume"
        )
    return signal_name or "request"


@contextmanager
def _local_negatives(objective: ContrastiveObjective) -> Iterator[None]:
    """While active, the objective takes its negatives from the local batch only."""
    saved, objective.gather = objective.gather, local_gather
    try:
        yield
    finally:
        objective.gather = saved


def _plain_copy(net: VATT, weights: Mapping[str, torch.Tensor]) -> VATT:
    """A plain (unsharded) VATT with the gathered full weights of an FSDP2 model."""
    with torch.random.fork_rng(devices=[]):  # its initialization must not move the run's RNG
        copy = VATT(net.config, net.tokenizer)
    copy.load_state_dict(dict(weights))
    return copy


def _merged(parts: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Histogram values of every rank, concatenated per key."""
    keys = dict.fromkeys(k for part in parts for k in part)
    return {k: torch.cat([part[k] for part in parts if k in part]) for k in keys}


def _lost_peer(ctx: DistributedContext, err: BaseException, run_dir: Path) -> str:
    cause = re.sub(r"^\[[^\]]*\]\s*", "", first_line(err)).split(". ")[
        0
    ]  # gloo: "[file:line] what. why"
    latest = latest_checkpoint(run_dir)
    where = f"newest checkpoint: {latest}" if latest else "no checkpoint yet"
    return (
        f"rank {ctx.rank} of {ctx.world_size}: another process of the run failed or stopped "
        f"answering ({cause}); {where}; restart the run with --resume"
    )


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


def resolve_device(name: str) -> torch.device:
    """``auto`` means CUDA when available, else CPU; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HarmoniaError(f"train.device is {name!r} but no CUDA device is available")
    return torch.device(name)


def bf16_autocast(device: torch.device, enabled: bool) -> Any:
    """bfloat16 autocast on CUDA when enabled; a no-op context elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def param_groups(*modules: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on weight matrices, none on biases, norms and scalars."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for module in modules:
        for param in module.parameters():
            if param.requires_grad:
                (decay if param.dim() >= 2 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]

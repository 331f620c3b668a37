"""The training loop: data -> VATT -> contrastive losses -> Harmonizer -> AdamW, top to bottom.

`train` builds the run's parts (`components.build_run`), restores them from the newest
checkpoint when resuming (`run_state.restore_run`), then loops: batch -> `step.train_step` ->
log -> maybe validate / checkpoint / stop. A run directory receives the resolved config,
metrics (JSONL + TensorBoard), atomic checkpoints, and at the end the model, the conflict
ledger and a summary. ``resume`` continues from the newest checkpoint exactly: same batches,
same random numbers, same optimizer state, so on CPU 2N steps equal N steps + resume + N steps
bit for bit.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from harmonia.allocator import keep_freed_memory
from harmonia.errors import DistributedError, first_line
from harmonia.files import write_atomic
from harmonia.losses import ContrastiveObjective, local_gather
from harmonia.training.batches import LoaderFailure
from harmonia.training.checkpoint import latest_checkpoint
from harmonia.training.components import TrainingRun, build_run, with_data_dir
from harmonia.training.config import TrainConfig, load_train_config
from harmonia.training.distributed import (
    DistributedContext,
    full_model_state,
    is_collective_failure,
)
from harmonia.training.health import learning_health
from harmonia.training.layout import CONFIG_FILE, LEDGER_CSV, MODEL_DIR, SUMMARY_FILE, TRACE_CSV
from harmonia.training.lock import run_lock
from harmonia.training.logging import MetricAccumulator, MetricLogger, Throughput
from harmonia.training.resume import checkpoint_to_resume, finished_summary, refuse_to_overwrite
from harmonia.training.run_state import final_model, restore_run, save_run
from harmonia.training.signals import StopRequest
from harmonia.training.step import train_step
from harmonia.training.trace import ConflictTrace
from harmonia.training.validation import validate
from harmonia.typed_config import to_yaml


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
    cfg = with_data_dir(cfg, data_dir)
    with (
        DistributedContext.from_env(cfg.train.device, timeout_s=cfg.distributed.timeout_s) as ctx,
        run_lock(run_dir, enabled=ctx.is_main),
    ):
        try:
            return _train(cfg, run_dir, ctx, data_dir=data_dir, resume=resume)
        except RuntimeError as err:
            if not ctx.is_distributed or not is_collective_failure(err):
                raise
            raise DistributedError(_lost_peer(ctx, err, run_dir)) from err


def _train(
    cfg: TrainConfig,
    run_dir: Path,
    ctx: DistributedContext,
    *,
    data_dir: str | Path | None,
    resume: bool,
) -> dict[str, Any]:
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
    run = build_run(cfg, run_dir, ctx, data_dir=data_dir, checkpoint=checkpoint)
    if run.device.type == "cpu" and cfg.train.keep_freed_memory:
        keep_freed_memory()
    if checkpoint is not None:
        restore_run(run, checkpoint)
    if main:
        write_atomic(run_dir / CONFIG_FILE, to_yaml(cfg))
    last_row, stopped_by = _loop(run, resume=resume)
    finished = run.progress.step >= cfg.train.steps and stopped_by is None
    summary = _summary(run, last_row, stopped_by, finished)
    weights = full_model_state(run.model) if finished and run.sharded else None

    def finish() -> None:
        if finished:
            final_model(run, weights).save_pretrained(run_dir / MODEL_DIR)
            if run.ledger is not None:
                run.ledger.to_csv(run_dir / LEDGER_CSV)
        write_atomic(run_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")

    ctx.run_on_main(finish)
    return summary


def _loop(run: TrainingRun, *, resume: bool) -> tuple[dict[str, float], str | None]:
    """Steps until the end or a stop; the last logged metrics and what stopped the run."""
    cfg, ctx, progress = run.cfg, run.ctx, run.progress
    main, steps = ctx.is_main, cfg.train.steps
    metrics, window = MetricAccumulator(), Throughput()
    last_row: dict[str, float] = {}
    stopped_by: str | None = None
    bar = tqdm(
        total=steps,
        initial=progress.step,
        disable=not (cfg.train.progress and main),
        desc="train",
        unit="step",
    )
    logger = (
        MetricLogger(run.run_dir, resume_step=progress.step if resume else None) if main else None
    )
    names = [spec.name for spec in run.objective.specs]
    trace_on = cfg.harmonize.ledger.trace and main
    trace = ConflictTrace(run.run_dir / TRACE_CSV, names) if trace_on else None
    with (
        StopRequest() as stop,
        logger or nullcontext(),
        closing(run.stream),
        bar,
        closing(trace) if trace is not None else nullcontext(),
    ):
        run.model.train()
        while progress.step < steps:
            tick = time.perf_counter()
            try:
                batch = next(run.stream)  # loader workers ignore stop signals: the step finishes
            except LoaderFailure as err:
                raise _loader_stopped(err, run) from None
            progress.skipped.extend(batch["skipped"])
            if ctx.any_rank(len(batch["id"]) < 2):  # all of a batch was corrupt: no contrast
                continue

            result = train_step(run, batch, trace)
            if not result.ok and main:
                losses = result.losses
                tqdm.write(
                    f"step {progress.step + 1}: non-finite loss or gradient {losses}; skipped"
                )
            progress.step += 1
            step = progress.step
            bar.update(1)
            window.add(time.perf_counter() - tick, len(batch["id"]))

            # ---- metrics: averaged over the steps since the last row (and over the ranks)
            result.record(metrics, skipped=len(batch["skipped"]))
            row: dict[str, float] = {}
            hists: dict[str, torch.Tensor] = {}
            if step % cfg.train.log_every == 0 or step == steps:
                row = ctx.mean(
                    {**metrics.means(), **window.take(ctx.world_size, run.stream.take_wait())}
                )
                hists = _merged(ctx.all_gather_object(metrics.histograms()))
                metrics.reset()
                bar.set_postfix(
                    loss=f"{row.get('loss/total', math.nan):.3f}", lr=f"{result.lr:.2e}"
                )
            every = cfg.train.eval_every
            if run.val_batches is not None and ((every and step % every == 0) or step == steps):
                with _local_negatives(run.objective):  # every rank validates the same batches
                    row.update(
                        validate(
                            run.model, run.objective, run.val_batches(), autocast=run.autocast()
                        )
                    )
            if row and logger is not None:
                logger.log(step, row, hists)
            last_row.update(row)

            # ---- checkpoints, the NaN/Inf stop, a stop signal (on any rank: all stop)
            if run.guard.update(result.ok):
                raise run.guard.error(step, save_run(run, step))
            stopping = ctx.any_rank(stop.requested) and step < steps
            if stopping or step % cfg.train.checkpoint_every == 0 or step == steps:
                checkpoint_path = save_run(run, step)
            if stopping:
                stopped_by = _stop(
                    stop.signal_name or "a stop on another rank", checkpoint_path, step, echo=main
                )
                break
    return last_row, stopped_by


def _summary(
    run: TrainingRun, last_row: dict[str, float], stopped_by: str | None, finished: bool
) -> dict[str, Any]:
    """What RUN/summary.json holds (the skipped samples of every rank; collective)."""
    cfg, ctx, progress = run.cfg, run.ctx, run.progress
    all_skipped = [item for items in ctx.all_gather_object(progress.skipped) for item in items]
    health = learning_health(last_row, cfg.data.batch_size * ctx.world_size, cfg.eval.batch_size)
    return {
        "status": "finished" if finished else f"stopped by {stopped_by}",
        "steps": progress.step,
        "target_steps": cfg.train.steps,
        "time_s": progress.elapsed,
        "bad_steps": run.guard.total,
        "skipped_samples": len(all_skipped),
        "skipped": all_skipped,
        "dropped_suspects": len(run.dropped),
        "skipped_validation": list(run.val_skipped.values()),
        "final_metrics": last_row,
        "learning": {name: h.to_dict() for name, h in health.items()},
        "dataset": str(run.dataset_dir),
        "device": str(run.device),
        "world_size": ctx.world_size,
        "rank": ctx.rank,
    }


def _loader_stopped(err: LoaderFailure, run: TrainingRun) -> LoaderFailure:
    """The loader's one-line error, with a checkpoint of the steps done since the last one.

    Under torchrun the other ranks are inside a step or a collective, so only a single process
    saves; the run resumes from its newest checkpoint once the cause is fixed.
    """
    step = run.progress.step
    if step % run.cfg.train.checkpoint_every == 0 or run.ctx.is_distributed:
        return err
    return LoaderFailure(
        f"{err}; checkpoint of step {step} written to {save_run(run, step)}; fix the "
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

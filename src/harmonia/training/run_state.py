"""Save and restore a training run: one checkpoint holds everything that makes resume bit-exact.

`save_run` and `restore_run` are a symmetric pair over the same keys: the objective, the
optimizer, the Harmonizer, every rank's data position and random generators, the bad-step guard,
the skipped samples, the elapsed time (and, beside the state, the model and the ledger). Under
FSDP2 the model and optimizer are gathered from the shards, so a checkpoint loads whatever the
world size or strategy of the run that resumes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from harmonia.models import VATT
from harmonia.training.checkpoint import (
    Checkpoint,
    restoring,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from harmonia.training.components import RANK_SEED_STRIDE, TrainingRun
from harmonia.training.distributed import (
    by_name,
    full_model_state,
    full_optimizer_state,
    load_optimizer_state,
)
from harmonia.training.resume import rank_state, saved_ledger
from harmonia.typed_config import to_dict


def save_run(run: TrainingRun, step: int) -> Path:
    """Write the checkpoint of ``step`` (collective: every rank calls it; rank 0 writes)."""
    ctx, progress = run.ctx, run.progress
    ranks = ctx.all_gather_object(
        {"rng": rng_state(), "data": run.stream.state_dict(), "skipped": progress.skipped}
    )
    if run.sharded:
        weights: Mapping[str, torch.Tensor] | None = full_model_state(run.model)
        optimizer = full_optimizer_state(run.stateful, run.optimizer)
    else:
        weights, optimizer = None, run.optimizer.state_dict()
    state = {
        "config": to_dict(run.cfg),
        "objective": run.objective.state_dict(),
        "optimizer": optimizer,
        "harmonizer": run.harmonizer.state_dict(),
        "data": [r["data"] for r in ranks],  # per rank: each draws its own share
        "guard": run.guard.state_dict(),
        "skipped": [item for r in ranks for item in r["skipped"]],
        "elapsed": progress.elapsed,
        "rng": [r["rng"] for r in ranks],
        "world_size": ctx.world_size,
    }
    return ctx.run_on_main(
        lambda: save_checkpoint(
            run.run_dir,
            step,
            model=final_model(run, weights),
            state=state,
            ledger=None if run.ledger is None else run.ledger.state_dict(),
            keep_last=run.cfg.train.keep_last,
        )
    )


def restore_run(run: TrainingRun, checkpoint: Checkpoint) -> None:
    """Load what `save_run` wrote into a run built from the same checkpoint (every rank)."""
    ctx, progress = run.ctx, run.progress
    with restoring(checkpoint.path):
        state = checkpoint.state
        run.objective.load_state_dict(state["objective"])
        if run.sharded:
            saved = by_name(state["optimizer"], run.stateful, run.optimizer)  # e.g. from DDP
            load_optimizer_state(run.stateful, run.optimizer, saved)
        else:
            run.optimizer.load_state_dict(state["optimizer"])
        run.harmonizer.load_state_dict(state["harmonizer"])
        if run.ledger is not None:
            run.ledger.load_state_dict(saved_ledger(checkpoint), source=str(checkpoint.path))
        run.stream.load_state_dict(rank_state(state, "data", ctx))
        run.guard.load_state_dict(state["guard"])
        progress.skipped = list(state["skipped"]) if ctx.is_main else []
        progress.elapsed_before = float(state["elapsed"])
        rng = rank_state(state, "rng", ctx)  # last: the above may draw random numbers
        if rng is not None:
            set_rng_state(rng)
        else:  # another world size: fresh per-rank streams (DropToken)
            seed = run.cfg.train.seed + RANK_SEED_STRIDE * ctx.rank + progress.step
            torch.manual_seed(seed)


def final_model(run: TrainingRun, weights: Mapping[str, torch.Tensor] | None = None) -> VATT:
    """The plain model to save: ``run.net`` itself, or (FSDP2) a plain copy holding the gathered
    full ``weights``."""
    if weights is None:
        return run.net
    with torch.random.fork_rng(devices=[]):  # its initialization must not move the run's RNG
        copy = VATT(run.net.config, run.net.tokenizer)
    copy.load_state_dict(dict(weights))
    return copy

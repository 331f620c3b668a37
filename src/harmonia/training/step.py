"""One training step: forward, the losses, the Harmonizer's backward, AdamW, the ledger.

Every harmonization method takes this path: the Harmonizer's backward replaces
``sum(losses).backward()`` (method ``none`` is the VATT baseline). A step whose loss or gradient
is not finite on any rank is skipped on every rank and leaves the Harmonizer's state as it was.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from harmonia.harmonization.ledger import ConflictLedger
from harmonia.harmonization.stats import HarmonizerStats, noisiness_scores
from harmonia.training.checkpoint import latest_checkpoint
from harmonia.training.components import TrainingRun
from harmonia.training.config import LedgerConfig
from harmonia.training.distributed import DistributedContext, clip_gradients
from harmonia.training.guard import weights_error, weights_finite
from harmonia.training.logging import MetricAccumulator
from harmonia.training.trace import ConflictTrace


@dataclass(frozen=True)
class StepResult:
    """What a step reports to the loop's metrics."""

    losses: dict[str, float]
    lr: float
    grad_norm: float
    """NaN for a skipped step."""
    stats: HarmonizerStats | None
    """The Harmonizer's per-sample statistics (None for a skipped step)."""

    @property
    def ok(self) -> bool:
        """False for a step skipped because a loss or a gradient was not finite."""
        return math.isfinite(self.grad_norm)

    def record(self, metrics: MetricAccumulator, skipped: int) -> None:
        """Add this step's scalars and per-pair cosines to the metrics of the log window."""
        scalars = {f"loss/{name}": v for name, v in self.losses.items()}
        scalars.update(
            {"loss/total": sum(self.losses.values()), "lr": self.lr, "grad_norm": self.grad_norm}
        )
        scalars.update({"bad_step": float(not self.ok), "skipped": float(skipped)})
        if self.stats is not None:
            scalars.update(self.stats.to_metrics())
            cosines = self.stats.cosines.detach().float().cpu()
            names = self.stats.names
            for k, first in enumerate(names):
                for m in range(k + 1, len(names)):
                    metrics.add_values(f"hist/{first}~{names[m]}", cosines[:, k, m])
        metrics.add(scalars)


def train_step(
    run: TrainingRun, batch: Mapping[str, Any], trace: ConflictTrace | None
) -> StepResult:
    """Train on ``batch`` at step ``run.progress.step`` (every rank at once)."""
    ctx, harmonizer, optimizer = run.ctx, run.harmonizer, run.optimizer
    step, ids = run.progress.step, list(batch["id"])
    with harmonizer.capture(run.encoder), run.autocast():
        output = run.model(batch)
        per_sample = run.objective(output)
        losses = run.objective.reduce(per_sample, output)
    values = {name: float(loss.detach()) for name, loss in losses.items()}
    optimizer.zero_grad(set_to_none=True)
    lr = run.schedule(step)
    for group in optimizer.param_groups:
        group["lr"] = lr
    stats, grad_norm = None, math.nan
    before = harmonizer.state_dict()  # a skipped step must not move it
    if not ctx.any_rank(not run.guard.is_finite(values.values())):
        stats = harmonizer.backward(
            losses,
            output.anchor,
            encoder=run.encoder,
            sample_ids=ids,
            progress=step / run.progress.total,
        )
        ctx.average_gradients(run.objective.parameters())  # DDP averages the model's
        grad_norm = clip_gradients(run.trainable, run.clip)
    if not math.isfinite(grad_norm):  # the same on every rank: gradients are reduced
        optimizer.zero_grad(set_to_none=True)
        harmonizer.load_state_dict(before)
        return StepResult(values, lr, grad_norm, None)
    optimizer.step()
    if ctx.any_rank(not weights_finite(run.trainable)):
        raise weights_error(step + 1, latest_checkpoint(run.run_dir))
    ctx.sync_harmonizer(harmonizer)
    if stats is not None and len(stats.gram) == len(ids):
        options = run.cfg.harmonize.ledger
        record_observations(ctx, run.ledger, trace, options, step, ids, per_sample, stats.gram)
    return StepResult(values, lr, grad_norm, stats)


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

"""Training steps that run the same on one process and on every rank of a torchrun world.

`tests/test_training_distributed.py` launches ``python -m torch.distributed.run
--nproc-per-node 2 tests/distributed_scenarios.py OUT START`` (CPU, gloo): each rank runs every
scenario on its rows of a global batch, resumes the one-process checkpoint START, and saves
what it saw in OUT; the test runs the same scenarios in one process over the whole global
batch and compares. The model is VATT tiny
(modality-agnostic) in float64 with DropToken off, the losses the real NCE + MIL-NCE with
negatives gathered across ranks.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from harmonia.harmonization import Harmonizer
from harmonia.harmonization.curriculum import build_curriculum
from harmonia.losses import ContrastiveObjective, default_specs, milnce, nce
from harmonia.models import VATT, ModelConfig, WordTokenizer
from harmonia.models.synthetic import WORDS, random_batch
from harmonia.training.distributed import (
    DistributedContext,
    clip_gradients,
    full_model_state,
    full_optimizer_state,
    load_optimizer_state,
    unwrap,
    wrap_model,
)

GLOBAL_BATCH = 8
"""Samples per step over all ranks (B = 4 per rank with two ranks)."""
STEPS = 2
LR = 0.5
CLIP = 5.0
"""Gradient-norm clipping (the first step's norm is about 40: it is clipped)."""


@contextmanager
def accumulation(model: nn.Module, sync: bool) -> Iterator[None]:
    """A micro-step of gradient accumulation, as a user writes it with the wrappers' own
    switches: DDP's ``no_sync`` or FSDP2's ``set_requires_gradient_sync`` when ``sync`` is
    False (gradients stay local), a plain step when it is True (they are reduced once)."""
    if isinstance(model, DistributedDataParallel) and not sync:
        with model.no_sync():
            yield
        return
    set_sync = getattr(model, "set_requires_gradient_sync", None)
    if set_sync is not None:
        set_sync(sync)
    try:
        yield
    finally:
        if set_sync is not None:
            set_sync(True)


def model_config() -> ModelConfig:
    """VATT tiny, modality-agnostic, without DropToken (its random tokens differ per rank)."""
    off = {"drop_token": 0.0}
    return ModelConfig.named("tiny", modalities={"video": off, "audio": off})


def rows(batch: dict[str, Any], ctx: DistributedContext) -> dict[str, Any]:
    """This rank's share of a global batch: rows ``rank, rank + W, ...`` (as RankEpochSampler)."""
    part = slice(ctx.rank, None, ctx.world_size)
    return {key: value[part] for key, value in batch.items() if key != "skipped"} | {"skipped": []}


def full(t: Tensor) -> Tensor:
    """The whole tensor of a (possibly FSDP-sharded) parameter or gradient."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def curriculum_of(name: str | None) -> Any:
    return None if name is None else build_curriculum("sigmoid", start=0.2, temperature=0.2)


def build(
    ctx: DistributedContext,
    strategy: str,
    start: dict[str, Any] | None = None,
    learnable_temperature: bool = False,
) -> tuple[nn.Module, ContrastiveObjective]:
    """VATT (seeded, or loaded from ``start``) wrapped by ``strategy``, and the objective."""
    torch.manual_seed(0)
    model = VATT(model_config(), WordTokenizer.build([" ".join(WORDS)])).double()
    specs = default_specs(model_config(), learnable_temperature=learnable_temperature)
    objective = ContrastiveObjective(specs, gather=ctx.gather).double()
    if start is not None:
        model.load_state_dict(start["model"])
        objective.load_state_dict(start["objective"])
    return wrap_model(model, ctx, strategy), objective


def step(
    model: nn.Module,
    objective: ContrastiveObjective,
    harmonizer: Harmonizer,
    batch: dict[str, Any],
    progress: float,
    micro_batches: int = 1,
) -> tuple[Tensor, Tensor]:
    """Forward + harmonized backward (accumulated over micro-batches); per-sample cos, weights."""
    encoder = unwrap(model).anchor_encoder()  # type: ignore[operator]
    size = len(batch["id"]) // micro_batches
    cosines, weights = [], []
    for m in range(micro_batches):
        part = {k: v[m * size : (m + 1) * size] for k, v in batch.items() if k != "skipped"}
        part["skipped"] = []
        with accumulation(model, sync=m == micro_batches - 1):
            with harmonizer.capture(encoder):
                out = model(part)
                losses = objective.reduce(objective(out), out)
            losses = {k: v / micro_batches for k, v in losses.items()}
            stats = harmonizer.backward(
                losses, out.anchor, sample_ids=part["id"], progress=progress
            )
        cosines.append(stats.cosines[:, 0, 1].detach())
        weights.append(stats.weights.detach())
    return torch.cat(cosines), torch.cat(weights)


def train_steps(
    ctx: DistributedContext,
    method: str,
    space: str,
    curriculum: str | None = None,
    strategy: str = "ddp",
    micro_batches: int = 1,
    sync_method: bool = True,
) -> dict[str, Any]:
    """``STEPS`` clipped SGD steps with the Harmonizer; returns parameters, gradients, stats.

    With ``micro_batches`` > 1 each rank's batch is split and the gradients are accumulated
    (``accumulation`` keeps DDP from reducing before the last micro-batch). ``sync_method``
    averages the method's state (GradVac's targets) over ranks after every step.
    """
    model, objective = build(ctx, strategy)
    calls = count_reductions(model)
    harmonizer = Harmonizer(method, space, curriculum=curriculum_of(curriculum), seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    named = list(unwrap(model).named_parameters())
    result: dict[str, Any] = {"grads": [], "cosines": [], "weights": [], "reduced": [], "norms": []}
    for index in range(STEPS):
        batch = rows(random_batch(model_config(), GLOBAL_BATCH, seed=index + 1), ctx)
        optimizer.zero_grad(set_to_none=True)
        cosines, weights = step(model, objective, harmonizer, batch, index / STEPS, micro_batches)
        result["reduced"].append(calls.take())
        result["grads"].append({n: full(p.grad).clone() for n, p in named if p.grad is not None})
        result["cosines"].append(cosines)
        result["weights"].append(weights)
        result["norms"].append(clip_gradients(model.parameters(), CLIP))
        optimizer.step()
        if sync_method:
            ctx.sync_harmonizer(harmonizer)
    result["method_state"] = harmonizer.state_dict()["method_state"]
    result["params"] = {n: full(p.detach()).clone() for n, p in named}
    result["numel"] = sum(p.numel() for _, p in named)
    return result


def adam_steps(
    ctx: DistributedContext, strategy: str, steps: range, start: dict[str, Any] | None = None
) -> dict[str, Any]:
    """AdamW + PCGrad steps ``steps`` (from a checkpoint ``start``) with learnable
    temperatures outside the wrapped model; the states a checkpoint holds after them (the full
    model and optimizer states reach rank 0 only under FSDP)."""
    model, objective = build(ctx, strategy, start, learnable_temperature=True)
    trained = nn.ModuleDict({"model": model, "objective": objective})
    harmonizer = Harmonizer("pcgrad", "embedding", seed=0)
    optimizer = torch.optim.AdamW(trained.parameters(), lr=1e-3)
    if start is not None:
        load_optimizer_state(trained, optimizer, start["optimizer"])
    for index in steps:
        batch = rows(random_batch(model_config(), GLOBAL_BATCH, seed=index + 1), ctx)
        optimizer.zero_grad(set_to_none=True)
        step(model, objective, harmonizer, batch, index / STEPS)
        ctx.average_gradients(objective.parameters())
        optimizer.step()
    return {
        "model": full_model_state(model),
        "objective": {k: v.detach().clone() for k, v in objective.state_dict().items()},
        "optimizer": full_optimizer_state(trained, optimizer),
    }


class ReductionCounter:
    """A DDP communication hook that all-reduces like the default one and counts what it reduced."""

    def __init__(self) -> None:
        self.numels: list[int] = []

    def take(self) -> list[int]:
        """Numbers of elements of the buckets reduced since the last call."""
        numels, self.numels = self.numels, []
        return numels

    def attach(self, model: DistributedDataParallel) -> None:
        # no annotations: DDP compares them with dist.GradBucket, and here they are strings
        def hook(state, bucket):  # type: ignore[no-untyped-def]
            self.numels.append(bucket.buffer().numel())
            return default_hooks.allreduce_hook(state, bucket)

        model.register_comm_hook(None, hook)


def count_reductions(model: nn.Module) -> ReductionCounter:
    counter = ReductionCounter()
    if isinstance(model, DistributedDataParallel):
        counter.attach(model)
    return counter


def gathered_losses(ctx: DistributedContext) -> dict[str, Tensor]:
    """NCE and MIL-NCE (masked [B, K, E] text) of this rank's rows with gathered negatives."""
    g = torch.Generator().manual_seed(3)
    v = F.normalize(torch.randn(GLOBAL_BATCH, 6, generator=g, dtype=torch.float64), dim=-1)
    a = F.normalize(torch.randn(GLOBAL_BATCH, 6, generator=g, dtype=torch.float64), dim=-1)
    t = F.normalize(torch.randn(GLOBAL_BATCH, 3, 6, generator=g, dtype=torch.float64), dim=-1)
    valid = torch.rand(GLOBAL_BATCH, 3, generator=g) < 0.7
    valid[1] = False  # a sample without any valid caption
    mine = rows({"v": v, "a": a, "t": t, "valid": valid, "id": list(range(GLOBAL_BATCH))}, ctx)
    leaves = {k: mine[k].clone().requires_grad_() for k in ("v", "a", "t")}
    per_nce = nce(leaves["v"], leaves["a"], reduction="none", gather=ctx.gather)
    per_mil = milnce(
        leaves["v"], leaves["t"], valid=mine["valid"], reduction="none", gather=ctx.gather
    )
    (per_nce.sum() + 2.0 * per_mil.sum()).backward()
    out = {"nce": per_nce.detach(), "milnce": per_mil.detach()}
    out.update({f"grad_{k}": leaf.grad for k, leaf in leaves.items() if leaf.grad is not None})
    return out


def collectives(ctx: DistributedContext) -> dict[str, Any]:
    """The context's small collectives with rank-dependent inputs."""
    temperature = nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    temperature.grad = torch.tensor([1.0, -1.0], dtype=torch.float64) * (ctx.rank + 1)
    untouched = nn.Parameter(torch.zeros(1))
    ctx.average_gradients([temperature, untouched])
    ctx.barrier()
    return {
        "mean": ctx.mean({"loss": float(ctx.rank), "other": 3.0}),
        "grad": temperature.grad,
        "untouched": untouched.grad is None,
        "objects": ctx.all_gather_object({"rank": ctx.rank}),
        "broadcast": ctx.broadcast_object(f"from {ctx.rank}"),
        "backend": ctx.backend,
    }


SCENARIOS: dict[str, Callable[[DistributedContext], Any]] = {
    "vanilla": lambda ctx: train_steps(ctx, "none", "embedding"),
    "pcgrad_embedding": lambda ctx: train_steps(ctx, "pcgrad", "embedding"),
    "pcgrad_parameters": lambda ctx: train_steps(ctx, "pcgrad", "parameters"),
    "curriculum": lambda ctx: train_steps(ctx, "pcgrad", "embedding", curriculum="sigmoid"),
    "gradvac": lambda ctx: train_steps(ctx, "gradvac", "embedding"),
    "gradvac_unsynced": lambda ctx: train_steps(ctx, "gradvac", "embedding", sync_method=False),
    "accumulation": lambda ctx: train_steps(ctx, "pcgrad", "embedding", micro_batches=2),
    "fsdp_embedding": lambda ctx: train_steps(ctx, "pcgrad", "embedding", strategy="fsdp"),
    "fsdp_parameters": lambda ctx: train_steps(ctx, "pcgrad", "parameters", strategy="fsdp"),
    "fsdp_accumulation": lambda ctx: train_steps(
        ctx, "pcgrad", "embedding", strategy="fsdp", micro_batches=2
    ),
    "checkpoint_ddp": lambda ctx: adam_steps(ctx, "ddp", range(1)),
    "checkpoint_fsdp": lambda ctx: adam_steps(ctx, "fsdp", range(1)),
    "gather": gathered_losses,
    "collectives": collectives,
}


def main(out: Path, start: Path) -> None:
    """Run every scenario, then resume ``start`` (one process's checkpoint after step 1)."""
    torch.set_num_threads(1)
    with DistributedContext.from_env("cpu") as ctx:
        results = {name: run(ctx) for name, run in SCENARIOS.items()}
        checkpoint = torch.load(start, weights_only=True)
        for strategy in ("ddp", "fsdp"):
            results[f"resume_{strategy}"] = adam_steps(ctx, strategy, range(1, 2), checkpoint)
        torch.save(results, out / f"rank{ctx.rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

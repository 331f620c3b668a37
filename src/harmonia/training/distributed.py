"""Running under torchrun: the process group, model wrapping, gathered negatives, rank merges.

`DistributedContext.from_env()` reads what torchrun exports (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT) and joins the process group: gloo on CPU, nccl on CUDA (one GPU per
process, ``cuda:LOCAL_RANK``). Without those variables, or with a world of one, it is a no-op
single-process context, so one code path serves a laptop and a cluster.

Per-sample harmonization stays exact under DDP. Each rank computes the loss of its own samples
against the negatives of every rank (`DistributedContext.gather`, the open_clip local-loss +
gather-with-grad scheme); the gather's backward sums over ranks the gradient with respect to a
rank's rows, so the gradient reaching rank r's embeddings is that of the sum of all ranks'
local losses. The Harmonizer's probing passes are ``torch.autograd.grad`` calls: they never run
the parameters' gradient accumulators, which is where DDP's reducer hooks sit, so the only
all-reduce of parameter gradients is the one triggered by the Harmonizer's final backward (once
per step, like ``loss.backward()``). DDP then averages over ranks, and with equal local batches
the mean over ranks of the local means is the mean over the global batch: one step on W x B
samples with W processes equals one step on W*B samples with one process (tested).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from datetime import timedelta
from functools import partial
from typing import Any, Literal, TypeVar, cast

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from harmonia.errors import ConfigError, DistributedError, HarmoniaError, first_line
from harmonia.harmonization import Harmonizer
from harmonia.harmonization.ledger import ConflictLedger, MergeMode
from harmonia.losses import Gather, gather_with_grad, local_gather

Strategy = Literal["none", "ddp", "fsdp"]
STRATEGIES: tuple[str, ...] = ("none", "ddp", "fsdp")
T = TypeVar("T")


class DistributedContext:
    """Where this process stands: rank, world size, device, and the process group (if any).

    Build it with `from_env` (torchrun) or `single` (one process); use it as a context
    manager, or call `close`, to leave the process group it joined.
    """

    def __init__(
        self,
        rank: int = 0,
        world_size: int = 1,
        local_rank: int = 0,
        device: torch.device | str = "cpu",
        group: Any = None,
        owns_group: bool = False,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"distributed: rank {rank} is outside a world of {world_size}")
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank
        self.device = torch.device(device)
        self.group = group
        self._owns_group = owns_group

    def __repr__(self) -> str:
        return (
            f"DistributedContext(rank={self.rank}, world_size={self.world_size}, "
            f"device={str(self.device)!r}, backend={self.backend!r})"
        )

    @classmethod
    def single(cls, device: torch.device | str = "cpu") -> DistributedContext:
        """One process, no process group: every collective below is the identity."""
        return cls(device=device)

    @classmethod
    def from_env(
        cls,
        device: str = "auto",
        *,
        backend: str | None = None,
        timeout_s: float = 1800.0,
    ) -> DistributedContext:
        """Join the process group torchrun describes in the environment (or run alone).

        ``device``: ``auto`` (``cuda:LOCAL_RANK`` when CUDA is available, else CPU), ``cpu`` or
        ``cuda``. ``backend`` defaults to nccl on CUDA and gloo on CPU. An already initialized
        default process group is reused (and left open by `close`).
        """
        env = os.environ
        if "WORLD_SIZE" not in env:
            return cls.single(_device(device, 0))
        world_size = _env_int(env, "WORLD_SIZE", minimum=1)
        rank = _env_int(env, "RANK", minimum=0)
        local_rank = _env_int(env, "LOCAL_RANK", minimum=0) if "LOCAL_RANK" in env else rank
        if rank >= world_size:
            raise ConfigError(f"distributed: RANK {rank} is outside a world of {world_size}")
        if world_size == 1:
            return cls.single(_device(device, local_rank))
        chosen = _device(device, local_rank)
        if chosen.type == "cuda":
            torch.cuda.set_device(chosen)
        if dist.is_initialized():
            if (dist.get_rank(), dist.get_world_size()) != (rank, world_size):
                raise ConfigError(
                    f"distributed: the process group is rank {dist.get_rank()} of "
                    f"{dist.get_world_size()}, the environment says {rank} of {world_size}"
                )
            return cls(rank, world_size, local_rank, chosen)
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not env.get(name)]
        if missing:
            raise ConfigError(
                f"distributed: WORLD_SIZE is {world_size} but {' and '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not set; launch with torchrun "
                "(see docs/distributed.md)"
            )
        backend = backend or ("nccl" if chosen.type == "cuda" else "gloo")
        dist.init_process_group(
            backend,
            init_method="env://",  # also joins torchrun's agent store when it hosts one
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=timeout_s),
            device_id=chosen if chosen.type == "cuda" else None,
        )
        return cls(rank, world_size, local_rank, chosen, owns_group=True)

    # ------------------------------------------------------------------ who and where
    @property
    def is_distributed(self) -> bool:
        """True when there is more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files (checkpoints, metrics, the final model)."""
        return self.rank == 0

    @property
    def backend(self) -> str | None:
        """gloo or nccl when distributed, else None."""
        return dist.get_backend(self.group) if self.is_distributed else None

    @property
    def collective_device(self) -> torch.device:
        """Where tensors for a collective live: the GPU for nccl, the CPU for gloo."""
        return self.device if self.backend == "nccl" else torch.device("cpu")

    @property
    def gather(self) -> Gather:
        """The negatives gather for `harmonia.losses` (``ContrastiveObjective(gather=...)``).

        Every rank's rows in rank order, with gradient: losses score their local samples
        against all of them. Single process: the identity.
        """
        if not self.is_distributed:
            return local_gather
        return partial(gather_with_grad, group=self.group)

    # ------------------------------------------------------------------ collectives
    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.is_distributed:
            dist.barrier(group=self.group)

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order."""
        if not self.is_distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank."""
        if not self.is_distributed:
            return obj
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src, group=self.group)
        return box[0]

    def any_rank(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank (a decision all ranks share)."""
        if not self.is_distributed:
            return bool(flag)
        vote = torch.tensor([1.0 if flag else 0.0], device=self.collective_device)
        dist.all_reduce(vote, op=dist.ReduceOp.MAX, group=self.group)
        return bool(vote.item() > 0)

    def run_on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only and hand its result to every rank (collective).

        If ``fn`` raises, every rank raises too (a `HarmoniaError` as itself, anything else as
        a `DistributedError` naming it on the other ranks), so no rank is left waiting for a
        peer that failed, e.g. while rank 0 builds the dataset or writes a checkpoint.
        """
        if not self.is_distributed:
            return fn()
        result: Any = None
        failure: BaseException | None = None
        if self.is_main:
            try:
                result = fn()
            except BaseException as err:
                failure = err
        shared = failure if isinstance(failure, HarmoniaError) else None
        if failure is not None and shared is None:
            first = first_line(failure, default="")
            shared = DistributedError(f"rank 0 failed: {type(failure).__name__}: {first}")
        outcome = self.broadcast_object(("error", shared) if failure else ("ok", result))
        if failure is not None:
            raise failure
        if outcome[0] == "error":
            raise outcome[1]
        return cast(T, outcome[1])

    def mean(self, values: Mapping[str, float]) -> dict[str, float]:
        """The mean over ranks of each named number (e.g. losses, for logging on rank 0).

        Every rank must pass the same names.
        """
        names = sorted(values)
        if not self.is_distributed or not names:
            return {name: float(values[name]) for name in names}
        gathered = self.all_gather_object(names)
        if any(other != names for other in gathered):
            raise ValueError(f"mean: ranks passed different names: {gathered}")
        numbers = [float(values[n]) for n in names]
        total = torch.tensor(numbers, dtype=torch.float64, device=self.collective_device)
        dist.all_reduce(total, group=self.group)
        return {n: float(v) / self.world_size for n, v in zip(names, total.tolist(), strict=True)}

    def average_gradients(self, parameters: Iterable[nn.Parameter]) -> None:
        """Average ``.grad`` over ranks for parameters outside the wrapped model.

        E.g. a learnable temperature of the `ContrastiveObjective`: DDP averages only the
        parameters of the module it wraps. Call it after the backward of a step that syncs.
        Parameters without a gradient are left out (the same ones on every rank).
        """
        if not self.is_distributed:
            return
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, group=self.group)
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    # ------------------------------------------------------------------ state shared by ranks
    def merge_ledger(
        self, ledger: ConflictLedger, since_step: int | None = None, how: MergeMode = "latest"
    ) -> None:
        """Make every rank's ledger the merge of all ranks' ledgers (in place, collective).

        Ranks update their ledgers with their own samples; call this before the sampler draws a
        new epoch and before rank 0 saves the ledger. ``since_step`` sends only the records seen
        from that step on (a compact delta for ledgers merged at the previous call); without it
        every rank ends with the identical merged ledger (ids in sorted order).
        """
        if not self.is_distributed:
            return
        states = self.all_gather_object(ledger.state_dict(since_step=since_step))
        merged = ConflictLedger.merge_states(states, how=how)
        if since_step is None:
            ledger.load_state_dict(merged.state_dict(), source="ledgers merged across ranks")
        else:
            ledger.merge(merged, how=how)

    def sync_harmonizer(self, harmonizer: Harmonizer) -> None:
        """Average the method's floating-point state over ranks (e.g. GradVac's EMA targets).

        A method whose state moves by the mean over the batch of a per-sample quantity moves,
        on each rank, by the mean over that rank's samples; averaging after every step gives
        the move by the global mean (ranks with equal batches), as with one process.
        """
        if not self.is_distributed:
            return
        state = harmonizer.state_dict()
        method_state = dict(state["method_state"])
        for key in sorted(method_state):
            value = method_state[key]
            if isinstance(value, Tensor) and value.is_floating_point():
                total = value.detach().to(self.collective_device, copy=True)
                dist.all_reduce(total, group=self.group)
                method_state[key] = (total / self.world_size).to(value.device)
        harmonizer.load_state_dict({**state, "method_state": method_state})

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Leave the process group if this context joined it."""
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self._owns_group = False

    def __enter__(self) -> DistributedContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------- models
def wrap_model(
    model: nn.Module,
    ctx: DistributedContext,
    strategy: str = "ddp",
    *,
    find_unused_parameters: bool = False,
    shard: Callable[[nn.Module], bool] | None = None,
) -> nn.Module:
    """Wrap ``model`` (already on ``ctx.device``) for data-parallel training.

    ``ddp``: DistributedDataParallel (default; gradients all-reduced once per backward).
    ``fsdp``: FSDP2 ``fully_shard`` on every submodule ``shard`` selects (default: the items
    of every ``nn.ModuleList``, i.e. transformer blocks) and on the root; parameters become
    sharded DTensors (see docs/distributed.md for what the Harmonizer supports under FSDP2,
    and `check_supported`). ``none`` (or a single process) returns ``model`` unchanged.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(
            f"distributed strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}"
        )
    if strategy == "none" or not ctx.is_distributed:
        return model
    if strategy == "ddp":
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return DistributedDataParallel(
            model,
            device_ids=device_ids,
            process_group=ctx.group,
            find_unused_parameters=find_unused_parameters,
        )
    from torch.distributed.fsdp import fully_shard

    chosen = shard or _in_module_list(model)
    for module in [m for m in model.modules() if m is not model and chosen(m)]:
        fully_shard(module)
    fully_shard(model)  # turns model into an FSDPModule in place
    return model


def check_supported(strategy: str, space: str, encoder: nn.Module | None = None) -> None:
    """Refuse a strategy / harmonization space pair that would fail or be inexact (ConfigError).

    Under FSDP2 the layers' weights are sharded once the forward is done: space ``batch``
    differentiates with respect to them and is refused; space ``parameters`` is exact: the
    native Gram rules need only a layer's inputs and output gradients, and the ``torch.func``
    fallback (convs, GroupNorm) gathers the layer's full weights itself. ``encoder`` is kept for
    callers; nothing about it is refused any more.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(
            f"distributed strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}"
        )
    if strategy != "fsdp":
        return
    if space == "batch":
        raise ConfigError(
            "distributed strategy fsdp cannot harmonize in space 'batch' (it differentiates "
            "with respect to the encoder's weights, which FSDP shards); use embedding or "
            "parameters, or strategy ddp"
        )
    # space 'parameters' works: native rules need no weights, and the torch.func fallback
    # gathers a sharded layer's full weights itself (a collective, same order on every rank)


_COLLECTIVE_FAILURES = (
    "gloo",
    "nccl",
    "connection closed",
    "connection reset",
    "broken pipe",
)


def is_collective_failure(err: BaseException) -> bool:
    """Whether ``err`` says a collective failed: a peer died, hung or closed its connection.

    torch raises ``DistError`` subclasses for most of these, and plain RuntimeErrors from the
    gloo transport for some; both name the backend or the broken connection.
    """
    if isinstance(err, dist.DistError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(word in text for word in _COLLECTIVE_FAILURES)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside a DDP wrapper (FSDP2 modifies the module in place)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


@contextmanager
def accumulation(model: nn.Module, sync: bool) -> Iterator[None]:
    """Gradient accumulation: put a micro-step's forward *and* backward inside this block.

    ``sync=False`` keeps gradients local (DDP ``no_sync``; FSDP2 without reduce-scatter);
    the last micro-step of an optimizer step uses ``sync=True`` and reduces the accumulated
    gradients once. Each micro-batch is harmonized (and finds its negatives) on its own, as
    one process accumulating the same global micro-batches would.
    """
    if isinstance(model, DistributedDataParallel):
        with model.no_sync() if not sync else nullcontext():
            yield
        return
    set_sync = getattr(model, "set_requires_gradient_sync", None)
    if set_sync is None:
        yield
        return
    set_sync(sync)
    try:
        yield
    finally:
        set_sync(True)


def clip_gradients(parameters: Iterable[nn.Parameter], max_norm: float) -> float:
    """``clip_grad_norm_`` over the whole model on every rank; returns the total norm.

    Call it after the gradients are reduced: under DDP every rank holds the same gradients;
    under FSDP2 the norm of the sharded gradients is reduced across ranks (plain parameters,
    e.g. the objective's temperatures, may be mixed in).
    """
    norm = torch.nn.utils.clip_grad_norm_(list(parameters), max_norm)
    full_tensor = getattr(norm, "full_tensor", None)
    return float(full_tensor() if callable(full_tensor) else norm)


def is_sharded(model: nn.Module) -> bool:
    """True if FSDP2 manages ``model`` or one of its submodules."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def full_model_state(model: nn.Module) -> dict[str, Tensor]:
    """The whole model's state on the CPU, keyed as the unwrapped module's ``state_dict``.

    Collective under FSDP2 (call it on every rank; only rank 0 receives the tensors, the others
    an empty dict). A checkpoint of it loads into the plain module before wrapping, whatever
    the world size or strategy of the run that resumes.
    """
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(model, options=options)  # type: ignore[return-value]
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's whole state keyed by parameter names (any strategy, any world size).

    ``model`` must hold every parameter of ``optimizer`` (wrap several modules in an
    ``nn.ModuleDict`` if needed). Collective under FSDP2; only rank 0 receives the state.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return dict(get_optimizer_state_dict(model, optimizer, options=options))


def by_name(
    state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """An optimizer state keyed by position (``optimizer.state_dict()``, as DDP and one process
    save it) keyed by parameter names instead, as `load_optimizer_state` wants it.

    Positions follow ``optimizer``'s parameter groups, which must list the parameters in the
    order of the run that saved the state. A state already keyed by names is returned as is.
    """
    groups = state.get("param_groups", [])
    if not groups or all(isinstance(p, str) for g in groups for p in g["params"]):
        return state
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    return {
        "state": {order[int(i)]: v for i, v in state["state"].items()},
        "param_groups": [{**g, "params": [order[int(i)] for i in g["params"]]} for g in groups],
    }


def load_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Load `full_optimizer_state` output on every rank (each rank passes the whole state).

    The state is copied first: the optimizer would otherwise keep (and step in place) the
    tensors of ``state``.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    set_optimizer_state_dict(model, optimizer, copy.deepcopy(state), options=options)


def _in_module_list(root: nn.Module) -> Callable[[nn.Module], bool]:
    items = {
        id(child)
        for module in root.modules()
        if isinstance(module, nn.ModuleList)
        for child in module
    }
    return lambda module: id(module) in items


def _device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("distributed: device cuda asked for, but CUDA is not available")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if name == "cpu" or name.startswith("cuda:"):
        return torch.device(name)
    raise ConfigError(f"distributed: device must be auto, cpu or cuda, got {name!r}")


def _env_int(env: Mapping[str, str], name: str, minimum: int) -> int:
    raw = env.get(name)
    try:
        value = int(raw) if raw is not None else None
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise ConfigError(
            f"distributed: environment variable {name} must be an integer >= {minimum}, "
            f"got {raw!r} (launch with torchrun)"
        )
    return value

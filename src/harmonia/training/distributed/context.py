"""The process group and its collectives: who this process is, and what the ranks share.

`DistributedContext.from_env()` reads what torchrun exports (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT) and joins the process group: gloo on CPU, nccl on CUDA (one GPU per
process, ``cuda:LOCAL_RANK``). Without those variables, or with a world of one, it is a no-op
single-process context, so one code path serves a laptop and a cluster.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from functools import partial
from typing import Any, TypeVar, cast

import torch
import torch.distributed as dist
from torch import Tensor, nn

from harmonia.errors import ConfigError, DistributedError, HarmoniaError, first_line
from harmonia.harmonization import Harmonizer
from harmonia.losses import Gather, gather_with_grad, local_gather

T = TypeVar("T")


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The device a config names: ``auto`` (CUDA when available, else the CPU), ``cpu``,
    ``cuda`` (this process's GPU: ``cuda:LOCAL_RANK`` over the visible ones) or ``cuda:N``.

    Asking for CUDA where there is none is a `ConfigError`.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} asked for, but no CUDA device is available")
        if name == "cuda":
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device(name)
    raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")


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
            return cls.single(resolve_device(device))
        world_size = _env_int(env, "WORLD_SIZE", minimum=1)
        rank = _env_int(env, "RANK", minimum=0)
        local_rank = _env_int(env, "LOCAL_RANK", minimum=0) if "LOCAL_RANK" in env else rank
        if rank >= world_size:
            raise ConfigError(f"distributed: RANK {rank} is outside a world of {world_size}")
        if world_size == 1:
            return cls.single(resolve_device(device, local_rank))
        chosen = resolve_device(device, local_rank)
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

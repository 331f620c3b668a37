"""Running under torchrun, behind three small parts.

- `context`: the process group and its collectives (`DistributedContext`), one device resolver;
- `wrapping`: DDP / FSDP2 wrapping and which harmonization spaces each supports;
- `sharded_state`: whole-model and whole-optimizer state under any strategy (checkpoints).

The trainer sees only these names; a single process gets a context whose collectives are the
identity, so one code path serves a laptop and a cluster.
"""

from harmonia.training.distributed.context import (
    DistributedContext,
    is_collective_failure,
    resolve_device,
)
from harmonia.training.distributed.sharded_state import (
    by_name,
    full_model_state,
    full_optimizer_state,
    load_optimizer_state,
)
from harmonia.training.distributed.wrapping import (
    STRATEGIES,
    Strategy,
    check_supported,
    clip_gradients,
    is_sharded,
    unwrap,
    wrap_model,
)

__all__ = [
    "STRATEGIES",
    "DistributedContext",
    "Strategy",
    "by_name",
    "check_supported",
    "clip_gradients",
    "full_model_state",
    "full_optimizer_state",
    "is_collective_failure",
    "is_sharded",
    "load_optimizer_state",
    "resolve_device",
    "unwrap",
    "wrap_model",
]

"""Whole-model and whole-optimizer state under any strategy, so checkpoints move between them.

A checkpoint holds the unsharded model and the optimizer state keyed by parameter names: it
loads into the plain module before wrapping, whatever the world size or strategy of the run that
resumes. Under FSDP2 the functions here are collectives (call them on every rank).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from harmonia.training.distributed.wrapping import is_sharded, unwrap


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

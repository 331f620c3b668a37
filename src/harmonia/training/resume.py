"""What a run resumes from: its newest checkpoint, checked against the config, and each rank's part.

`checkpoint_to_resume` finds the newest checkpoint (None when the run has none yet) and refuses
one whose config differs in anything that changes what is computed; `rank_state` picks this
process's share of the state saved per rank (data position, random generators).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harmonia.errors import CheckpointError, HarmoniaError
from harmonia.files import parse_json
from harmonia.models import VATT
from harmonia.training.checkpoint import (
    Checkpoint,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
)
from harmonia.training.config import TrainConfig
from harmonia.training.distributed import DistributedContext
from harmonia.training.layout import CONFIG_FILE, MODEL_DIR, SUMMARY_FILE
from harmonia.typed_config import to_dict

RESUMABLE_CHANGES = (
    "train.",
    "eval.",
    "data.dir",
    "data.num_workers",
    "data.source",
    "distributed.",
)
"""Config keys that may differ when resuming a run (they do not change what is computed)."""


def config_changes(
    saved: Mapping[str, Any], current: Mapping[str, Any], prefix: str = ""
) -> list[str]:
    """Dotted keys whose values differ between two plain config trees."""
    changed = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        path = f"{prefix}{key}"
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            changed += config_changes(a, b, f"{path}.")
        elif a != b:
            changed.append(path)
    return changed


def checkpoint_to_resume(run_dir: Path, cfg: TrainConfig, echo: bool) -> Checkpoint | None:
    """The run's newest checkpoint (None if it has none yet); CheckpointError if its config
    differs from ``cfg`` outside `RESUMABLE_CHANGES`. ``echo``: say so when there is none."""
    path = latest_checkpoint(run_dir)
    if path is None:  # killed before its first checkpoint, or a job script that always resumes
        if echo:
            print(f"--resume: no checkpoint in {run_dir / 'checkpoints'} yet; starting the run")
        return None
    checkpoint = load_checkpoint(path)
    changed = [
        key
        for key in config_changes(checkpoint.state.get("config", {}), to_dict(cfg))
        if not key.startswith(RESUMABLE_CHANGES)
    ]
    if changed:
        raise CheckpointError(
            f"cannot resume {run_dir}: the config differs from the run's at {_some(changed)} "
            f"(resume with {run_dir / CONFIG_FILE}, or start a new run)"
        )
    return checkpoint


def check_saved_model(model: VATT, cfg: TrainConfig, path: Path) -> None:
    """CheckpointError if the checkpoint's model config is not the run's ``model`` section."""
    changed = config_changes(to_dict(model.config), to_dict(cfg.model), "model.")
    if changed:
        raise CheckpointError(
            f"{path}: its model (config.json) differs from the run's config at {_some(changed)}"
        )


def _some(keys: list[str], shown: int = 4) -> str:
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def saved_ledger(checkpoint: Checkpoint) -> dict[str, Any]:
    """The checkpoint's ledger state; CheckpointError when it saved none."""
    if checkpoint.ledger is None:
        raise CheckpointError(f"{checkpoint.path}: no ledger saved, but the config enables one")
    return checkpoint.ledger


def refuse_to_overwrite(run_dir: Path) -> None:
    """HarmoniaError if ``run_dir`` already holds a run (checkpoints or a final model)."""
    if list_checkpoints(run_dir) or (run_dir / MODEL_DIR).exists():
        raise HarmoniaError(
            f"{run_dir} already holds a run; pass --resume to continue it or choose another --out"
        )


def rank_state(state: Mapping[str, Any], key: str, ctx: DistributedContext) -> Any:
    """This rank's part of a state saved per rank (a list), if the world size matches.

    At another world size the data position is rank 0's (the plain sampler continues at its
    global position; the curriculum sampler refuses) and the random state is None. Before
    torchrun support a single process saved the state itself, not a list.
    """
    saved = state[key]
    per_rank = saved if isinstance(saved, list) else [saved]
    if len(per_rank) == ctx.world_size:
        return per_rank[ctx.rank]
    return None if key == "rng" else per_rank[0]


def finished_summary(run_dir: Path, steps: int) -> dict[str, Any] | None:
    """The run's summary if it already finished ``steps`` steps (its model written), else None."""
    try:
        summary = parse_json((run_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # e.g. killed while writing it: finishing again rewrites it
    done = isinstance(summary, dict) and summary.get("status") == "finished"
    if done and int(summary.get("steps", -1)) >= steps and (run_dir / MODEL_DIR).is_dir():
        return summary
    return None

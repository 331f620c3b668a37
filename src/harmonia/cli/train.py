"""`harmonia train CONFIG --out RUN_DIR [--data DATASET_DIR] [--resume] [key=value ...]`.

The same command runs under torchrun (``torchrun --nproc-per-node N -m harmonia train ...``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from harmonia.errors import HarmoniaError, first_line


def register(subparsers: Any) -> None:
    """Add the `train` command."""
    parser = subparsers.add_parser(
        "train",
        help="train a model from a config into a run directory",
        description="Train VATT with cross-modality gradient harmonization. CONFIG is a shipped "
        "config name (see `harmonia config list`) or a YAML file; key=value pairs override it "
        "(e.g. harmonize.method=pcgrad train.steps=500). Under torchrun (torchrun "
        "--nproc-per-node N -m harmonia train ...) the N processes share one global batch of "
        "N x data.batch_size samples and rank 0 writes the run directory; see "
        "docs/distributed.md.",
    )
    parser.__class__ = _IntermixedParser
    parser.add_argument("config", help="shipped config name (e.g. demo) or YAML file")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.add_argument("--out", required=True, help="run directory (metrics, checkpoints, model)")
    parser.add_argument("--data", default=None, help="dataset directory (default: data.dir)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the run's newest checkpoint (start the run if it has none yet)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


class _IntermixedParser(argparse.ArgumentParser):
    """Lets ``key=value`` overrides come before, between or after the options.

    Plain argparse assigns positionals from the first run of them only, so in
    ``train demo --out RUN steps=5`` the override would be rejected.
    """

    _intermixing = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if self._intermixing:
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def run(args: argparse.Namespace) -> int:
    """Train; a stop signal ends with a checkpoint and exit code 0."""
    from safetensors import SafetensorError

    from harmonia.training.health import LossHealth
    from harmonia.training.loop import train_named

    overrides = list(args.overrides)
    if args.no_progress:
        overrides.append("train.progress=false")
    try:
        summary = train_named(
            args.config, args.out, overrides, data_dir=args.data, resume=args.resume
        )
    except (OSError, SafetensorError) as err:  # disk full, unwritable output: not a bug
        raise HarmoniaError(_io_error(err, Path(args.out))) from err
    if summary.get("rank", 0) != 0:  # under torchrun, rank 0 reports for the run
        return 0
    final = {k: v for k, v in summary["final_metrics"].items() if k.startswith(("loss/", "val/"))}
    print(
        f"{summary['status']} after {summary['steps']} steps in {summary['time_s']:.1f} s; "
        f"run directory: {args.out}"
    )
    if final:
        print(json.dumps(final, indent=1, sort_keys=True))
    for name, health in summary.get("learning", {}).items():
        print(f"learning health: {LossHealth.from_dict(name, health).sentence()}")
    if summary["skipped_samples"]:
        print(f"skipped {summary['skipped_samples']} corrupt samples (listed in summary.json)")
    if summary.get("skipped_validation"):
        print(
            f"skipped {len(summary['skipped_validation'])} corrupt validation samples "
            "(listed in summary.json, skipped_validation)"
        )
    return 0


def _io_error(err: BaseException, run_dir: Path) -> str:
    """One line: the file and the cause, and where the run can be resumed from."""
    from harmonia.training.checkpoint import latest_checkpoint

    if isinstance(err, OSError) and err.filename is not None:
        cause = f"{err.filename}: {err.strerror or err}"
    else:
        cause = first_line(err)
    latest = latest_checkpoint(run_dir)
    where = f"newest checkpoint: {latest} (resume with --resume)" if latest else "no checkpoint yet"
    return f"training stopped: {cause}; {where}"

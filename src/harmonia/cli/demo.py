"""`harmonia demo`: the main job of `make demo`.

Today it makes sure the default AV-MNIST-T dataset exists under RUN/data and prints its summary.
Later stages (training, evaluation, report) extend `run` after `prepare_data`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from harmonia.cli.data import (
    add_build_options,
    add_source_option,
    build_config,
    load_source,
    one_line_errors,
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo", help="build the default dataset (and, later, train + evaluate)"
    )
    one_line_errors(parser)
    parser.add_argument("--run-dir", default="runs/demo", help="where the demo writes everything")
    add_source_option(parser)
    add_build_options(parser)
    parser.add_argument("--workers", type=int, default=None, help="render processes")
    parser.set_defaults(func=run)


def prepare_data(args: argparse.Namespace) -> Path:
    """RUN/data: reused when a complete dataset is already there, built otherwise."""
    from harmonia.data import build_dataset
    from harmonia.data.index import SUMMARY_FILE

    out = Path(args.run_dir) / "data"
    if (out / SUMMARY_FILE).is_file():
        print(f"using the dataset already in {out}")
        return out
    config = build_config(args)
    source = load_source(args.source, allow_builtin=True)
    build_dataset(config, source, out, overwrite=out.exists(), workers=args.workers)
    return out


def run(args: argparse.Namespace) -> int:
    from harmonia.data import describe, load_summary

    data = prepare_data(args)
    print(describe(load_summary(data)))
    return 0

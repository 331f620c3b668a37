"""The `harmonia` command line: one small module per sub-command, registered here."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from harmonia.errors import HarmoniaError

# Each module defines `register(subparsers)`, which adds its parser and sets `func`.
COMMAND_MODULES: tuple[str, ...] = (
    "config",
    "data",
    "demo",
    "train",
    "eval",
    "audit",
    "experiment",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every sub-command registered."""
    from harmonia import __version__

    parser = argparse.ArgumentParser(
        prog="harmonia",
        description="Multimodal contrastive pre-training with cross-modality gradient harmonization.",
    )
    parser.add_argument("--version", action="version", version=f"harmonia {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"harmonia.cli.{name}").register(sub)
    for each in _parsers(parser):
        one_line_errors(each)
    return parser


def one_line_errors(parser: argparse.ArgumentParser) -> None:
    """Make argparse report a bad option as one line (exit 2) instead of usage + message."""

    def error(message: str) -> None:
        parser.exit(2, f"{parser.prog}: error: {message}\n")

    parser.error = error  # type: ignore[method-assign,assignment]


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``parser`` and every sub-command parser below it."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found += _parsers(child)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except HarmoniaError as err:
        print(f"harmonia: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("harmonia: interrupted", file=sys.stderr)
        return 130

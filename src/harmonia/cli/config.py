"""`harmonia config show NAME|PATH [key=value ...]`: print a resolved training config as YAML."""

from __future__ import annotations

import argparse

from harmonia.training.config import load_train_config, shipped_configs
from harmonia.typed_config import to_yaml


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `config` command and its `show` / `list` actions."""
    parser = subparsers.add_parser("config", help="show shipped or custom training configs")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="print the resolved config (YAML) after overrides")
    show.add_argument("config", help="a shipped config name (e.g. demo) or a YAML file")
    show.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. optim.lr=3e-4")
    show.set_defaults(func=run)
    listing = actions.add_parser("list", help="list the shipped configs")
    listing.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the resolved config, or the shipped config names."""
    if args.action == "list":
        print("\n".join(shipped_configs()))
        return 0
    print(to_yaml(load_train_config(args.config, args.overrides)), end="")
    return 0

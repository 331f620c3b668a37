"""`harmonia experiment reproduce`: the study of the paper's claims, written to docs/RESULTS.md."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from harmonia.errors import HarmoniaError


def register(subparsers: Any) -> None:
    """Add the `experiment` command and its `reproduce` sub-command."""
    from harmonia.experiments.plan import BUDGETS

    parser = subparsers.add_parser(
        "experiment",
        help="reproducible studies (e.g. `experiment reproduce`: the paper's claims)",
        description="Reproducible studies built on the trainer and evaluation.",
    )
    sub = parser.add_subparsers(dest="experiment", metavar="STUDY")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
    rep = sub.add_parser(
        "reproduce",
        help="ablation / space / backbone / scaling study of gradient harmonization",
        description=(
            "Train and evaluate every run of the study (baseline, +GR, +CL, +GR+CL at several "
            "misalignment rates and seeds; GR in embedding vs parameter space; a modality-specific "
            "backbone; clean vs clean + noisier extra data) in a pool of processes, caching each "
            "finished run in the work directory, then write the results page and its figures."
        ),
    )
    budgets = ", ".join(f"{name}: {b.description}" for name, b in BUDGETS.items())
    rep.add_argument("--budget", choices=list(BUDGETS), default="full", help=budgets)
    rep.add_argument(
        "--work", default=None, help="datasets, runs and cache (default: runs/study-BUDGET)"
    )
    rep.add_argument("--results", default="docs/RESULTS.md", help="results page to write")
    rep.add_argument(
        "--figures", default=None, help="figure folder (default: figures/ beside --results)"
    )
    rep.add_argument(
        "--jobs", type=int, default=2, help="runs in parallel, one thread each (default: 2)"
    )
    rep.add_argument(
        "--source",
        default=None,
        help="source media (default: $HARMONIA_DATA, then the fetch cache)",
    )
    rep.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: write the page from the runs already finished in --work",
    )
    rep.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the study and write the page."""
    from harmonia.experiments.plan import BUDGETS
    from harmonia.experiments.study import command_line, reproduce

    if args.jobs < 1:
        raise HarmoniaError(f"--jobs must be >= 1, got {args.jobs}")
    results = Path(args.results)
    figures = Path(args.figures) if args.figures else results.parent / "figures"
    outcome = reproduce(
        BUDGETS[args.budget],
        Path(args.work or f"runs/study-{args.budget}"),
        results_md=results,
        figures_dir=figures,
        jobs=args.jobs,
        source=args.source,
        command=command_line(),
        report_only=args.report_only,
    )
    return 1 if outcome["failed"] else 0

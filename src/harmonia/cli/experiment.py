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
    scores = sub.add_parser(
        "conflict-scores",
        help="compare noisiness scores replayed from runs' conflict traces",
        description=(
            "For runs trained with harmonize.ledger.trace=true, derive the paper's gradient-"
            "conflict score and its alternatives (raw inner product, late window, gradient "
            "norms, online losses) from the same per-sample observations and print each one's "
            "AUROC for caption- and audio-misaligned training triplets (mean +- sd over runs)."
        ),
    )
    scores.add_argument("runs", nargs="+", metavar="RUN_DIR", help="traced training runs")
    scores.add_argument("--json", default=None, help="also write the AUROCs per run here")
    scores.set_defaults(func=run_conflict_scores)


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


def run_conflict_scores(args: argparse.Namespace) -> int:
    """Print the comparison table of `harmonia.experiments.conflict_scores`."""
    import json

    from harmonia.data.index import load_labels
    from harmonia.evaluation.run_dir import RunDir
    from harmonia.experiments.conflict_scores import Trace, breakdown, compare, markdown
    from harmonia.files import write_atomic
    from harmonia.training.layout import TRACE_CSV

    runs = []
    for path in map(Path, args.runs):
        if not (path / TRACE_CSV).is_file():
            raise HarmoniaError(f"{path}: no {TRACE_CSV} (train with harmonize.ledger.trace=true)")
        labels = load_labels(RunDir(path).require_dataset())
        runs.append((Trace.read(path), labels))
    table = compare(runs)
    print(markdown(table))
    for path, (trace, labels) in zip(args.runs, runs, strict=True):
        print(f"\n{path}, second half of training:\n{breakdown(trace, labels)}")
    if args.json:
        write_atomic(Path(args.json), json.dumps(table, indent=2) + "\n")
    return 0

"""`harmonia audit RUN_DIR`: the self-contained HTML audit report and per-sample score CSV."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `audit` command."""
    parser = subparsers.add_parser(
        "audit",
        help="write an HTML report of training curves and the most suspect (misaligned) samples",
        description=(
            "Write one self-contained HTML file (opens offline) with loss and conflict curves, "
            "the gradient-cosine distribution over training, the curriculum, and the top-K "
            "samples the ledger suspects of misalignment (frames, audio, captions, ground truth "
            "when the dataset index has it), plus a CSV of every sample's score beside it."
        ),
    )
    parser.add_argument(
        "run_dir", metavar="RUN_DIR", help="a directory written by `harmonia train`"
    )
    parser.add_argument("--top", type=int, default=16, metavar="K", help="suspects to show (16)")
    parser.add_argument(
        "--data",
        metavar="DATASET_DIR",
        help="dataset the run trained on (default: from its config)",
    )
    parser.add_argument(
        "--out", metavar="PATH", help="HTML file to write (default: RUN_DIR/audit.html)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the report and say where it went."""
    from harmonia.audit import build_audit

    outputs = build_audit(args.run_dir, data_dir=args.data, top_k=args.top, out=args.out)
    print(f"wrote {outputs.html} ({outputs.n_shown} suspects shown of {outputs.n_scored} scored)")
    print(f"wrote {outputs.csv}")
    return 0

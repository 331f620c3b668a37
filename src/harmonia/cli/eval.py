"""`harmonia eval RUN_DIR`: evaluate a trained run's model on a dataset split; table + JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harmonia.errors import HarmoniaError, OutputError
from harmonia.files import refuse_special, write_atomic


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `eval` command."""
    parser = subparsers.add_parser(
        "eval",
        help="zero-shot, retrieval, linear-probe and noise-detection metrics of a trained run",
        description=(
            "Load RUN_DIR/model, encode a split of a dataset built by `harmonia data build` and "
            "report zero-shot accuracy, retrieval R@K / median rank (instance- and class-level), "
            "linear probes (fitted on the train split) and how well the run's ledger finds the "
            "training set's misaligned samples. A metric whose labels the dataset lacks (e.g. "
            "one imported from your own videos) is skipped and listed with the reason. Writes "
            "RUN_DIR/eval.json unless --json is given."
        ),
    )
    parser.add_argument(
        "run_dir", metavar="RUN_DIR", help="a directory written by `harmonia train`"
    )
    parser.add_argument(
        "--data", metavar="DATASET_DIR", help="dataset to evaluate on (default: the run's own)"
    )
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument(
        "--train-split", default="train", help="split the linear probes are fitted on"
    )
    parser.add_argument(
        "--json", metavar="PATH", help="write the results here (default: RUN_DIR/eval.json)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="clips per forward pass")
    parser.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
    parser.add_argument(
        "--max-eval", type=int, metavar="N", help="evaluate only the first N clips of the split"
    )
    parser.add_argument(
        "--max-train", type=int, metavar="N", help="fit probes on the first N training clips only"
    )
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the table, write the JSON."""
    from harmonia.evaluation.evaluate import evaluate
    from harmonia.evaluation.run_dir import RunDir
    from harmonia.evaluation.table import format_table
    from harmonia.models import VATT

    for name in ("batch_size", "max_eval", "max_train"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise HarmoniaError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.workers < 0:
        raise HarmoniaError(f"--workers must be >= 0, got {args.workers}")
    run_dir = RunDir(args.run_dir)
    out = Path(args.json) if args.json else run_dir.eval_path
    refuse_special(out)  # before the evaluation, not after
    model_dir = run_dir.require_model()
    dataset = run_dir.require_dataset(args.data)
    model = VATT.from_pretrained(model_dir, device=args.device)
    result = evaluate(
        model,
        dataset,
        args.split,
        train_split=args.train_split,
        ledger=run_dir.ledger(),
        batch_size=args.batch_size,
        num_workers=args.workers,
        max_eval=args.max_eval,
        max_train=args.max_train,
        progress=True,
        temperature=run_dir.temperature(),
    )
    result = {"run": str(run_dir.path), "model": str(run_dir.model_dir), **result}
    print(format_table(result))
    try:
        write_atomic(out, json.dumps(result, indent=2) + "\n")
    except OutputError as err:
        raise HarmoniaError(f"{err}; the results above were not saved (--json PATH)") from None
    print(f"\nwrote {out}")
    return 0

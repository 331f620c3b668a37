"""`harmonia demo`: the main job of `make demo`.

Builds the default AV-MNIST-T dataset (if absent), trains the VATT baseline and the harmonized
model (same data, same seed), evaluates both on the held-out test split (a speaker and images
never seen in training), writes the audit report of the harmonized run, and prints the two side
by side. Every stage reuses what an earlier, interrupted demo left behind: a finished run is
kept, a stopped run resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harmonia.cli.data import (
    add_build_options,
    add_source_option,
    build_config,
    load_source,
)
from harmonia.errors import HarmoniaError
from harmonia.training.layout import EVAL_FILE, MODEL_DIR, SUMMARY_FILE

# (run name, shipped config): the baseline first, then the harmonized model.
DEMO_RUNS: tuple[tuple[str, str], ...] = (("baseline", "demo"), ("harmonized", "demo-harmonized"))

# (row label, path into eval.json): what the side-by-side table shows.
TABLE_ROWS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("zero-shot digit accuracy (video)", ("zero_shot", "digit", "accuracy")),
    ("zero-shot motion accuracy (video)", ("zero_shot", "motion", "accuracy")),
    ("text->video R@1 (class)", ("retrieval", "text->video", "class", "R@1")),
    ("audio->video R@1 (class)", ("retrieval", "audio->video", "class", "R@1")),
    ("video->audio R@1 (class)", ("retrieval", "video->audio", "class", "R@1")),
    ("linear probe video digit", ("linear_probe", "video/digit", "accuracy")),
    ("linear probe video motion", ("linear_probe", "video/motion", "accuracy")),
    ("linear probe audio digit", ("linear_probe", "audio/digit", "accuracy")),
    ("held-out va loss (chance 3.466)", ("losses", "va", "loss")),
    ("held-out vt loss (chance 3.466)", ("losses", "vt", "loss")),
    ("noise AUROC (ledger, train set)", ("noise_detection", "ledger", "any", "auroc")),
    ("noise AUROC, wrong captions", ("noise_detection", "ledger", "text", "auroc")),
    ("noise AUROC, wrong audio", ("noise_detection", "ledger", "audio", "auroc")),
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="build the default dataset, train baseline + harmonized, evaluate, audit",
        description=(
            "The main job: build AV-MNIST-T into RUN_DIR/data (if absent), train the VATT "
            "baseline (config 'demo') and the harmonized model (config 'demo-harmonized'), "
            "evaluate both on the test split, write RUN_DIR/harmonized/audit.html and print a "
            "side-by-side table (RUN_DIR/comparison.json). Interrupted demos resume."
        ),
    )
    parser.add_argument("--run-dir", default="runs/demo", help="where the demo writes everything")
    add_source_option(parser)
    add_build_options(parser)
    parser.add_argument("--workers", type=int, default=None, help="render processes")
    parser.add_argument("--data-only", action="store_true", help="stop after building the dataset")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides applied to both runs, e.g. train.steps=100",
    )
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
    source = load_source(demo_source(args.source), allow_builtin=True)
    build_dataset(config, source, out, overwrite=out.exists(), workers=args.workers)
    return out


def demo_source(source: str | None) -> str | None:
    """The source to build from: as given, else $HARMONIA_DATA or a complete fetch cache, else
    a fresh `harmonia data fetch` (checksummed), and only when that fails the built-in set."""
    from harmonia.data.fetch import fetch_sources
    from harmonia.data.sources import BUILTIN, ENV_DATA, default_cache, fetch_complete
    from harmonia.errors import DataError

    if source or os.environ.get(ENV_DATA):
        return source
    cache = default_cache()  # $HARMONIA_CACHE or ~/.cache/harmonia/source
    if fetch_complete(cache):
        return None
    print(f"no source data yet: fetching MNIST + FSDD into {cache} (SHA-256 checked)")
    try:
        fetch_sources(cache)
    except (DataError, OSError) as err:
        print(f"fetch failed: {err}; falling back to the built-in set", file=sys.stderr)
        return BUILTIN
    return None


def train_runs(runs: list[tuple[str, str]], root: Path, data: Path, overrides: list[str]) -> None:
    """Train, then evaluate, the demo runs side by side: one process each, sharing the CPUs.

    Independent runs on one thread each finish sooner than one after the other on all threads.
    A finished run (or evaluation) is kept, a stopped run resumes; only the last run draws a
    progress bar, the others write RUN/train.log (evaluations RUN/eval.log).
    """

    for name, _ in runs:
        if (root / name / MODEL_DIR).is_dir():
            print(f"[{name}] already trained: {root / name / MODEL_DIR}")
    todo = [(n, c) for n, c in runs if not (root / n / MODEL_DIR).is_dir()]
    trains = []
    for i, (name, config) in enumerate(todo):
        last = i == len(todo) - 1
        args = ["train", config, "--out", str(root / name), "--data", str(data), "--resume"]
        args += ([] if last else ["--no-progress"]) + overrides
        trains.append((name, args, None if last else root / name / "train.log"))
    _in_parallel(trains)
    for name, _ in todo:
        summary = json.loads((root / name / SUMMARY_FILE).read_text(encoding="utf-8"))
        if summary["status"] != "finished":
            raise HarmoniaError(f"[{name}] {summary['status']}; run `make demo` again to resume")
    evals = [
        (name, ["eval", str(root / name), "--data", str(data)], root / name / "eval.log")
        for name, _ in runs
        if not (root / name / EVAL_FILE).is_file()
    ]
    _in_parallel(evals)


def _in_parallel(jobs: Sequence[tuple[str, list[str], Path | None]]) -> None:
    """Run ``harmonia ARGS`` for all jobs at once, the CPUs split between them; each job's
    output goes to its log file (None: this terminal)."""
    if not jobs:
        return
    threads = max(1, len(os.sched_getaffinity(0)) // len(jobs))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = []
    for name, args, log in jobs:
        where = f", log {log}" if log is not None else ""
        print(f"[{name}] harmonia {' '.join(args[:2])} ({threads} thread(s){where})", flush=True)
        out = None
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            out = log.open("w", encoding="utf-8")
        command = [sys.executable, "-m", "harmonia", *args]
        process = subprocess.Popen(command, env=env, stdout=out, stderr=out)
        started.append((name, log, out, process))
    failed = []
    for name, log, out, process in started:
        if process.wait() != 0:
            failed.append(
                f"[{name}] exited with {process.returncode}" + (f" ({log})" if log else "")
            )
        if out is not None:
            out.close()
    if failed:
        raise HarmoniaError("; ".join(failed))


def evaluate_run(run_dir: Path) -> dict[str, Any]:
    """The eval.json that `train_runs` had `harmonia eval` write for a run."""
    from harmonia.evaluation.run_dir import RunDir

    result: dict[str, Any] = json.loads(RunDir(run_dir).eval_path.read_text(encoding="utf-8"))
    return result


def lookup(result: Mapping[str, Any], path: tuple[str, ...]) -> float | None:
    """The number at ``path`` in an eval result, or None where that metric is absent."""
    node: Any = result
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return float(node) if isinstance(node, (int, float)) else None


def suspect_precision(run_dir: Path, data: Path, ks: tuple[int, ...] = (16, 100)) -> dict:
    """Fraction truly misaligned among the ledger's k most suspect training samples."""
    from harmonia.data.index import load_labels
    from harmonia.evaluation.labels import noise_flag
    from harmonia.evaluation.noise_detection import precision_at
    from harmonia.evaluation.run_dir import RunDir

    labels = load_labels(data)
    flags = [noise_flag(labels[e.id]) for e in RunDir(run_dir).ledger() if e.id in labels]
    return {f"P@{k}": precision_at(flags, k) for k in ks}


def comparison_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """A plain-text table: one row per metric, one column per run, plus the difference."""
    names = list(results)
    head = f"{'metric (test split)':36}" + "".join(f"{n:>12}" for n in names)
    lines = [head + (f"{'diff':>10}" if len(names) == 2 else ""), "-" * (len(head) + 10)]
    for label, path in TABLE_ROWS:
        values = [lookup(results[n], path) for n in names]
        cells = "".join(f"{'-':>12}" if v is None else f"{v:12.3f}" for v in values)
        diff = ""
        if len(values) == 2 and None not in values:
            diff = f"{values[1] - values[0]:+10.3f}"  # type: ignore[operator]
        lines.append(f"{label:36}{cells}{diff}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from harmonia.audit.build import build_audit
    from harmonia.data import describe, load_summary
    from harmonia.training.health import LossHealth

    started = time.time()
    data = prepare_data(args)
    print(describe(load_summary(data)))
    if args.data_only:
        return 0
    root = Path(args.run_dir)
    results: dict[str, dict[str, Any]] = {}
    train_runs(list(DEMO_RUNS), root, data, list(args.overrides))
    for name, _ in DEMO_RUNS:
        results[name] = evaluate_run(root / name)
    audit = build_audit(root / DEMO_RUNS[-1][0], data_dir=data)
    table = comparison_table(results)
    comparison = {
        "runs": {name: str(root / name) for name, _ in DEMO_RUNS},
        "metrics": {
            label: {n: lookup(results[n], path) for n in results} for label, path in TABLE_ROWS
        },
        "seconds": round(time.time() - started, 1),
    }
    (root / "comparison.json").write_text(json.dumps(comparison, indent=2) + "\n", "utf-8")
    print()
    print(table)
    for name in results:
        summary = json.loads((root / name / SUMMARY_FILE).read_text(encoding="utf-8"))
        for loss, health in summary.get("learning", {}).items():
            print(f"[{name}] learning health: {LossHealth.from_dict(loss, health).sentence()}")
    precision = suspect_precision(root / DEMO_RUNS[-1][0], data)
    comparison["audit_precision"] = precision
    (root / "comparison.json").write_text(json.dumps(comparison, indent=2) + "\n", "utf-8")
    shown = ", ".join(f"{k}: {'-' if v is None else f'{v:.2f}'}" for k, v in precision.items())
    print(f"\naudit report: {audit.html}; truly misaligned among the top suspects ({shown})")
    print(f"demo finished in {comparison['seconds']:.0f} s; everything is in {root}")
    return 0

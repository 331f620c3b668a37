"""Wall time until the demo config reaches a zero-shot digit accuracy, per Harmonizer space.

Each arm trains the shipped `demo` config (tiny VATT, 1,000 steps of 32 clips) on a clean
AV-MNIST-T built with the default media spec, writing a checkpoint every ``--every`` steps and
no validation pass. Every checkpoint is then evaluated with `harmonia.evaluation.evaluate` on
the test split (the speaker no training clip comes from), probes skipped. The time to a target
is the run's own elapsed wall time (saved in the checkpoint) at the first checkpoint whose
zero-shot digit accuracy reaches it; evaluation time is not counted. Arms: the baseline (method
none) and per-sample PCGrad in each space, with no curriculum, so they differ only in how the
gradient is formed.

    python benchmarks/time_to_accuracy.py --source ../shared/data                # one seed
    python benchmarks/time_to_accuracy.py --source ../shared/data --seeds 0 1 2

Runs already finished in --work are reused. Each run gets ``--threads`` threads and runs alone
(``--jobs 1``), so its wall time is that of a training on that many cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import mean, stdev
from typing import Any

ARMS: dict[str, list[str]] = {
    "baseline": [],
    "embedding pcgrad": ["harmonize.method=pcgrad", "harmonize.space=embedding"],
    "parameters pcgrad": ["harmonize.method=pcgrad", "harmonize.space=parameters"],
    "batch pcgrad": ["harmonize.method=pcgrad", "harmonize.space=batch"],
}
"""Arm -> overrides of the `demo` config."""
RESULT = "time_to_accuracy.json"
"""Per run: each checkpoint's step, elapsed seconds and zero-shot digit accuracy."""


def harmonia(threads: int, *args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run([sys.executable, "-m", "harmonia", *args], check=True, env=env)


def curve(run: Path, data: Path) -> list[dict[str, float]]:
    """(step, elapsed s, zero-shot digit accuracy) of every checkpoint of ``run``."""
    from harmonia.evaluation.evaluate import evaluate
    from harmonia.models import VATT
    from harmonia.training.checkpoint import list_checkpoints, load_checkpoint

    points = []
    for path in list_checkpoints(run):
        state = load_checkpoint(path).state
        model = VATT.from_pretrained(path).eval()
        result = evaluate(model, data, "test", train_split="none")
        accuracy = result["zero_shot"]["digit"]["accuracy"]
        points.append({"step": state["step"], "elapsed": state["elapsed"], "zero_shot": accuracy})
    return points


def run_one(work: Path, data: Path, arm: str, seed: int, args: argparse.Namespace) -> list[Any]:
    run = work / f"{arm.replace(' ', '_')}-s{seed}"
    result = run / RESULT
    if not result.is_file():
        harmonia(
            args.threads, "train", "demo", "--out", str(run), "--data", str(data), "--resume",
            "--no-progress", f"train.seed={seed}", f"train.checkpoint_every={args.every}",
            "train.keep_last=1000", "train.eval_every=0", *ARMS[arm], *args.set,
        )  # fmt: skip
        result.write_text(json.dumps(curve(run, data), indent=1) + "\n")
    points: list[Any] = json.loads(result.read_text())
    return points


def first_reaching(points: list[dict[str, float]], target: float) -> dict[str, float] | None:
    """The first checkpoint at or above ``target``, or None."""
    return next((p for p in points if p["zero_shot"] >= target), None)


def cell(values: list[float], unit: str = "") -> str:
    if len(values) == 1:
        return f"{values[0]:.0f}{unit}" if unit else f"{values[0]:.3f}"
    if unit:
        return f"{mean(values):.0f} +- {stdev(values):.0f}{unit}"
    return f"{mean(values):.3f} +- {stdev(values):.3f}"


def table(curves: dict[str, list[list[dict[str, float]]]], targets: list[float]) -> list[str]:
    """Markdown: per arm, wall time (and step) to each target, the final accuracy and time."""
    head = ["arm", "seeds", *[f"to {t:.2f}" for t in targets], "final zero-shot", "whole run"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" + " ---: |" * (len(head) - 1)]
    for arm, runs in curves.items():
        cells = [arm, str(len(runs))]
        for target in targets:
            hits = [first_reaching(points, target) for points in runs]
            reached = [h for h in hits if h is not None]
            if not reached:
                cells.append("not reached")
                continue
            text = cell([h["elapsed"] for h in reached], " s")
            text += " (step " + "/".join(f"{h['step']:.0f}" for h in reached) + ")"
            if len(reached) < len(runs):
                text += f", {len(reached)}/{len(runs)} runs"
            cells.append(text)
        cells.append(cell([points[-1]["zero_shot"] for points in runs]))
        steps = "/".join(f"{points[-1]['step']:.0f}" for points in runs)
        cells.append(cell([points[-1]["elapsed"] for points in runs], " s") + f" ({steps} steps)")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/time-to-accuracy")
    parser.add_argument("--data", help="a built clean dataset (default: built into WORK/data)")
    parser.add_argument("--source", help="source data for that build (`harmonia data build`)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.7, 0.8])
    parser.add_argument("--every", type=int, default=100, help="steps between checkpoints")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="more config overrides (tests)"
    )
    args = parser.parse_args()
    work = Path(args.work)
    data = Path(args.data) if args.data else work / "data"
    if not (data / "summary.json").is_file():
        source = ["--source", args.source] if args.source else []
        harmonia(
            args.threads, "data", "build", "--out", str(data), "--noise", "0", "--quiet", *source
        )
    jobs = [(arm, seed) for arm in args.arms for seed in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        done = list(pool.map(lambda job: run_one(work, data, job[0], job[1], args), jobs))
    curves: dict[str, list[list[dict[str, float]]]] = {}
    for (arm, _), points in zip(jobs, done, strict=True):
        curves.setdefault(arm, []).append(points)
    print(
        f"demo config, clean AV-MNIST-T, zero-shot digit accuracy on the test speaker (chance "
        f"0.10); a checkpoint every {args.every} steps; {args.threads} thread(s) per run, "
        f"{args.jobs} run(s) at a time; wall time of training only"
    )
    print()
    print("\n".join(table(curves, args.targets)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

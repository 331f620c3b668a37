"""`reproduce()`: the whole study from one call: datasets -> runs (pool, cached) -> figures -> RESULTS.md."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from harmonia.experiments import figures
from harmonia.experiments.datasets import ensure_built, extra_view
from harmonia.experiments.plan import Budget, StudyPlan, extra_view_key, make_plan
from harmonia.experiments.report import render
from harmonia.experiments.runner import run_all, split_cached
from harmonia.files import write_atomic

PACKAGES = ("harmonia", "torch", "numpy", "scikit-learn", "av", "matplotlib")


def prepare_datasets(
    plan: StudyPlan,
    work: Path,
    source: str | None,
    *,
    workers: int = 2,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, Path], str]:
    """Build (or reuse) every dataset of the plan; paths by key, and the source's description."""
    from harmonia.data import resolve_source

    data_root = work / "data"
    data_root.mkdir(parents=True, exist_ok=True)
    loaded = resolve_source(source)
    paths: dict[str, Path] = {}
    for spec in plan.datasets:
        started = time.time()
        path, built = ensure_built(spec, data_root, loaded, workers=workers, progress=False)
        paths[spec.key] = path
        what = f"built in {time.time() - started:.0f} s" if built else "reused"
        log(f"dataset {spec.key}: {what} ({path})")
        if spec.extra:
            view = extra_view(path, data_root / extra_view_key(spec.key))
            paths[extra_view_key(spec.key)] = view
    return paths, describe_source(loaded.description)


def describe_source(description: Mapping[str, Any]) -> str:
    """One line for the source media: where it is and what it holds."""
    kind = description.get("kind", "?")
    if kind != "files":
        return f"the {kind} source (not real speech: numbers are smoke tests only)"
    return (
        f"{description.get('root', '?')}: {description.get('mnist_count', '?')} MNIST images, "
        f"{description.get('recordings', '?')} FSDD recordings "
        f"({', '.join(map(str, description.get('speakers', [])))})"
    )


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{platform.system()} {platform.release()}, {cpu}, {cores} cores usable"


def reproduce(
    budget: Budget,
    work: Path,
    *,
    results_md: Path,
    figures_dir: Path,
    jobs: int = 2,
    source: str | None = None,
    command: str = "",
    report_only: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the study of `budget` in `work` and write `results_md` and its figures.

    With `report_only`, nothing is trained: the page is written from the runs already cached
    (e.g. of a study stopped part-way), and says which runs are missing.
    """
    started = time.time()
    started_at = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    plan = make_plan(budget)
    log(
        f"study '{budget.name}': {len(plan.runs)} runs, {len(plan.datasets)} datasets, work dir {work}"
    )
    datasets, source_text = prepare_datasets(plan, work, source, workers=jobs, log=log)
    tasks = [(spec, datasets[spec.dataset], work / "runs" / spec.name) for spec in plan.runs]
    log(f"datasets ready after {time.time() - started:.0f} s")
    if report_only:
        outcomes, pending = split_cached(tasks, budget)
        log(f"report only: {len(outcomes)} of {len(tasks)} runs cached, {len(pending)} missing")
    else:
        outcomes = run_all(tasks, budget, jobs=jobs, log=log)
    ordered = [outcomes[spec.name] for spec in plan.runs if spec.name in outcomes]
    missing = [spec.name for spec in plan.runs if spec.name not in outcomes]
    figures_dir.mkdir(parents=True, exist_ok=True)
    made = []
    path = figures.conflict_distributions(ordered, budget, figures_dir)
    if path is not None:
        made.append((path.name, "Final conflict scores of clean and misaligned training triplets"))
    path = figures.metric_vs_noise(ordered, budget, figures_dir)
    made.append((path.name, "Downstream metrics vs misalignment rate for each variant"))
    invocation = {
        "command": command,
        "started": started_at,
        "wall_s": round(time.time() - started, 1),
        "ran": sum(1 for r in outcomes.values() if r.get("_fresh") and "error" not in r),
        "failed": sum(1 for r in outcomes.values() if "error" in r),
        "cached": sum(1 for r in outcomes.values() if "error" not in r and not r.get("_fresh")),
        "report_only": report_only,
        "jobs": jobs,
    }
    history = _record_invocation(work / "invocations.jsonl", invocation)
    facts = {
        **invocation,
        "invocations": history,
        "runs_span_s": runs_span(work / "runs", ordered),
        "run_seconds": sum(float(r.get("seconds", 0.0)) for r in ordered if "error" not in r),
        "missing": missing,
        "machine": machine(),
        "versions": versions(),
        "source": source_text,
        "figures": made,
    }
    results_md.parent.mkdir(parents=True, exist_ok=True)
    text = render(plan, ordered, facts)
    write_atomic(results_md, text)
    failed = [r["name"] for r in ordered if "error" in r]
    log(
        f"wrote {results_md} and {len(made)} figures in {figures_dir} "
        f"({(time.time() - started) / 60:.1f} min; {len(failed)} failed, {len(missing)} missing)"
    )
    return {"results": ordered, "facts": facts, "failed": failed, "missing": missing}


def _record_invocation(path: Path, invocation: dict[str, Any]) -> list[dict[str, Any]]:
    """Append this invocation to the work directory's history; return the whole history."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(invocation) + "\n")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def runs_span(runs_dir: Path, results: Sequence[Mapping[str, Any]]) -> float | None:
    """Seconds from the first run's start to the last run's end (result.json times)."""
    starts, ends = [], []
    for result in results:
        path = runs_dir / str(result.get("name")) / "result.json"
        if "error" not in result and path.is_file():
            end = path.stat().st_mtime
            starts.append(end - float(result.get("seconds", 0.0)))
            ends.append(end)
    return max(ends) - min(starts) if ends else None


def command_line(argv: Sequence[str] | None = None) -> str:
    return " ".join(["harmonia", *(sys.argv[1:] if argv is None else argv)])

"""Run the study's training runs in a pool of processes, each run cached by its result file.

One task = train (harmonia.training.loop.train) + evaluate (harmonia.evaluation.evaluate) + a
compact `result.json` holding the numbers the report needs. A run whose result.json exists with
the same fingerprint (resolved config + dataset checksum) is not run again, so an interrupted
study resumes where it stopped; a run interrupted mid-training continues from its newest
checkpoint. Each worker process uses one torch thread (OMP_NUM_THREADS=1).
"""

from __future__ import annotations

import csv
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harmonia.experiments.plan import Budget, RunSpec
from harmonia.files import write_atomic
from harmonia.training.layout import EVAL_FILE, LEDGER_CSV, TRACE_CSV

RESULT_FILE = "result.json"
FINGERPRINT_FILE = "fingerprint"
"""Written before training starts: a checkpoint is only resumed by a run of the same fingerprint."""


def fingerprint(config: Mapping[str, Any], dataset_checksum: str) -> str:
    """Identity of what a run computes: its resolved config (minus paths) and its data.

    A run that drops the suspects of another run's ledger is identified by that ledger's
    content, not its path (a rerun of the other run gives a new ledger, so a new fingerprint).
    """
    data = {k: v for k, v in config.get("data", {}).items() if k not in ("dir", "source")}
    suspects = dict(data.get("drop_suspects") or {})
    if suspects.get("ledger"):
        ledger = Path(suspects.pop("ledger"))
        suspects["ledger_sha256"] = (
            hashlib.sha256(ledger.read_bytes()).hexdigest() if ledger.is_file() else "absent"
        )
        data["drop_suspects"] = suspects
    payload = {**config, "data": data, "dataset": dataset_checksum}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def resolved_config(spec: RunSpec, budget: Budget, dataset: Path, runs_dir: Path) -> Any:
    """The TrainConfig of a run (variant config + budget overrides + the dataset path)."""
    from harmonia.training.config import load_train_config

    overrides = [*spec.overrides(budget, runs_dir), f"data.dir={dataset}"]
    return load_train_config(spec.config, overrides)


def cached_result(run_dir: Path, expected: str) -> dict[str, Any] | None:
    """The run's result if it was computed with the fingerprint `expected`, else None."""
    path = run_dir / RESULT_FILE
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return result if result.get("fingerprint") == expected else None


def run_one(spec: RunSpec, budget: Budget, dataset: Path, run_dir: Path) -> dict[str, Any]:
    """Train and evaluate one run; write and return its result (the cached one if valid)."""
    import torch

    from harmonia.data.index import load_summary
    from harmonia.evaluation.evaluate import evaluate
    from harmonia.evaluation.run_dir import RunDir
    from harmonia.models import VATT
    from harmonia.training.checkpoint import latest_checkpoint
    from harmonia.training.loop import train
    from harmonia.typed_config import to_dict

    torch.set_num_threads(1)
    cfg = resolved_config(spec, budget, dataset, run_dir.parent)
    expected = fingerprint(to_dict(cfg), load_summary(dataset)["checksum"])
    cached = cached_result(run_dir, expected)
    if cached is not None:
        return cached

    started = time.time()
    marker = run_dir / FINGERPRINT_FILE
    same = marker.is_file() and marker.read_text(encoding="utf-8").strip() == expected
    resume = same and latest_checkpoint(run_dir) is not None
    if run_dir.exists() and not resume:
        shutil.rmtree(run_dir)  # interrupted before its first checkpoint, or another config's run
    run_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(expected + "\n", encoding="utf-8")
    summary = train(cfg, run_dir, data_dir=dataset, resume=resume)
    if summary["status"] != "finished":  # a stop signal: keep the checkpoint, cache nothing
        raise RuntimeError(f"{spec.name}: training {summary['status']} at step {summary['steps']}")
    train_seconds = time.time() - started

    run = RunDir(run_dir)
    model = VATT.from_pretrained(run.require_model())
    evaluation = evaluate(
        model,
        dataset,
        "test",
        train_split="train",
        ledger=run.ledger(),
        batch_size=budget.eval_batch_size,
        max_train=budget.train,
        temperature=run.temperature(),
    )
    _write_json(run_dir / EVAL_FILE, evaluation)
    result = {
        "name": spec.name,
        "spec": asdict(spec),
        "fingerprint": expected,
        "budget": budget.name,
        "train": {
            "steps": summary["steps"],
            "time_s": summary["time_s"],
            "bad_steps": summary["bad_steps"],
            "skipped_samples": summary["skipped_samples"],
            "final": {
                k: v
                for k, v in summary["final_metrics"].items()
                if k.startswith(("loss/", "val/", "conflict/"))
            },
        },
        "conflict": conflict_trace(run.metrics()),
        "eval": evaluation,
        "ledger": ledger_by_flag(run_dir / LEDGER_CSV, dataset),
        "ledger_scores": replayed_scores(run_dir, dataset),
        "seconds": time.time() - started,
        "train_seconds": train_seconds,
    }
    _write_json(run_dir / RESULT_FILE, result)
    return result


def replayed_scores(run_dir: Path, dataset: Path) -> dict[str, Any]:
    """Detection metrics of every ledger score replayed from the run's trace ({} without one)."""
    from harmonia.data.index import load_labels
    from harmonia.experiments.conflict_scores import Trace, ledger_detection

    if not (run_dir / TRACE_CSV).is_file():
        return {}
    return ledger_detection(Trace.read(run_dir), load_labels(dataset))


def conflict_trace(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """Per loss pair: the logged steps, fraction of conflicting samples and mean gradient cosine."""
    out: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key.startswith("conflict/") and key.endswith("/fraction") and value is not None:
                pair = key.split("/")[1]
                entry = out.setdefault(pair, {"step": [], "fraction": [], "mean_cos": []})
                cos = row.get(f"conflict/{pair}/mean_cos")
                entry["step"].append(float(row["step"]))
                entry["fraction"].append(float(value))
                entry["mean_cos"].append(float("nan") if cos is None else float(cos))
    return out


def ledger_by_flag(ledger_csv: Path, dataset: Path) -> dict[str, list[float]]:
    """Final ledger scores grouped by ground truth: clean, text, audio, both (misaligned parts)."""
    from harmonia.data.index import load_labels

    if not ledger_csv.is_file():
        return {}
    labels = load_labels(dataset)
    groups: dict[str, list[float]] = {"clean": [], "text": [], "audio": [], "both": []}
    with ledger_csv.open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            record = labels.get(row["id"])
            if record is None or "misaligned_text" not in record:
                continue
            text, audio = bool(record["misaligned_text"]), bool(record["misaligned_audio"])
            group = "both" if text and audio else "text" if text else "audio" if audio else "clean"
            groups[group].append(round(float(row["score"]), 5))
    return groups


def _write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=1) + "\n")


def _init_worker() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def _task(spec: RunSpec, budget: Budget, dataset: str, run_dir: str, parent: int) -> dict[str, Any]:
    if os.getppid() != parent:  # the study was stopped: do not start queued runs as an orphan
        return {"name": spec.name, "error": "the study process is gone; run not started"}
    try:
        return run_one(spec, budget, Path(dataset), Path(run_dir))
    except BaseException as err:  # reported by the parent, the study goes on
        return {
            "name": spec.name,
            "error": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(limit=6),
        }


def split_cached(
    tasks: Sequence[tuple[RunSpec, Path, Path]], budget: Budget
) -> tuple[dict[str, dict[str, Any]], list[tuple[RunSpec, Path, Path]]]:
    """(valid cached results by run name, tasks still to run)."""
    from harmonia.data.index import load_summary
    from harmonia.typed_config import to_dict

    results: dict[str, dict[str, Any]] = {}
    pending: list[tuple[RunSpec, Path, Path]] = []
    checksums: dict[Path, str] = {}
    for spec, dataset, run_dir in tasks:
        if dataset not in checksums:
            checksums[dataset] = load_summary(dataset)["checksum"]
        config = to_dict(resolved_config(spec, budget, dataset, run_dir.parent))
        cached = cached_result(run_dir, fingerprint(config, checksums[dataset]))
        if cached is not None:
            results[spec.name] = cached
        else:
            pending.append((spec, dataset, run_dir))
    return results, pending


def run_all(
    tasks: Sequence[tuple[RunSpec, Path, Path]],
    budget: Budget,
    *,
    jobs: int = 2,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Run every (spec, dataset, run_dir) task; results by run name, failures hold "error"."""
    results, pending = split_cached(tasks, budget)
    log(f"{len(tasks)} runs: {len(results)} cached, {len(pending)} to run with {jobs} processes")
    if not pending:
        return results

    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the spawned workers before torch loads
    started = time.time()
    done = 0
    context = multiprocessing.get_context("spawn")
    waiting = list(pending)  # a run reading another run's ledger starts once that one is done
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker) as pool:
        futures: dict[Future[dict[str, Any]], RunSpec] = {}

        def submit_ready() -> None:
            for task in list(waiting):
                spec, dataset, run_dir = task
                source = spec.ledger_from
                if source is not None and source not in results:
                    continue
                waiting.remove(task)
                if source is not None and "error" in results[source]:
                    results[spec.name] = {"name": spec.name, "error": f"{source} failed"}
                    continue
                job = pool.submit(_task, spec, budget, str(dataset), str(run_dir), os.getpid())
                futures[job] = spec

        submit_ready()
        while futures:
            future = next(as_completed(futures))
            spec = futures.pop(future)
            result = {**future.result(), "_fresh": True}
            results[spec.name] = result
            submit_ready()
            done += 1
            elapsed = time.time() - started
            eta = elapsed / done * (len(pending) - done)
            if "error" in result:
                log(f"[{done}/{len(pending)}] {spec.name} FAILED: {result['error']}")
                print(result.get("traceback", ""), file=sys.stderr)
            else:
                log(
                    f"[{done}/{len(pending)}] {spec.name} done in {result['seconds']:.0f} s "
                    f"(elapsed {elapsed / 60:.1f} min, about {eta / 60:.1f} min left)"
                )
    for spec, _, _ in waiting:
        results[spec.name] = {"name": spec.name, "error": f"needs {spec.ledger_from}, not planned"}
    return results

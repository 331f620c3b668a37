"""Hard kills and graceful stops of `harmonia train`: every resume continues the run exactly.

The kill loop starts a short run (gradvac + curriculum + ledger-driven sampler: the most state
to restore), SIGKILLs it — from outside at a random moment during training, or from inside in
the middle of writing a checkpoint file, before a checkpoint is renamed into place, halfway
through deleting an old one, while the metrics file is being truncated on resume, or while the
summary is being written — checks that every listed checkpoint loads, resumes, and repeats.
The finished run must equal an uninterrupted one bit for bit on CPU: weights, ledger and the
logged losses. The loader uses ``num_workers=0`` by default (the slow loop alternates 0 and 2:
samples are seeded per index, so the worker count does not change a bit).

``HARMONIA_KILL_ITERATIONS`` sets the kills of the default-suite loop (default 4); the slow
loop (``make test-slow``) kills 20 times, or that many if larger.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from faults import (
    KILLED,
    TINY_RUN,
    assert_same_weights,
    finish,
    logged_steps,
    readable_checkpoints,
    record,
    reproducible_rows,
    same_tree,
    start,
    torch_threads,
    wait_for_step,
)
from harmonia.harmonization.ledger import ConflictLedger
from harmonia.harmonization.sampler import CurriculumSampler
from harmonia.training.batches import BatchStream, EpochSampler
from harmonia.training.checkpoint import latest_checkpoint, load_checkpoint
from harmonia.training.config import load_train_config
from harmonia.training.loop import train

KILLS = int(os.environ.get("HARMONIA_KILL_ITERATIONS", "4"))
SLOW_KILLS = max(20, KILLS)
SEED = int(os.environ.get("HARMONIA_KILL_SEED", "0"))
EPOCH = 6
"""Batches per epoch: 48 training samples in batches of 8."""
STATEFUL = [
    "harmonize.method=gradvac",
    "harmonize.curriculum.name=sigmoid",
    "harmonize.sampler.enabled=true",
    "train.checkpoint_every=2",
    "train.keep_last=2",
]
TORN_FILES = ("state.pt", "model.safetensors", "manifest.json", "ledger.json")


def overrides(steps: int) -> list[str]:
    return [*TINY_RUN, *STATEFUL, f"train.steps={steps}"]


def argv(run: Path, data: Path, steps: int, *, resume: bool, workers: int = 0) -> list[str]:
    return [
        "train", "demo", "--out", str(run), "--data", str(data), "--no-progress",
        *overrides(steps), f"data.num_workers={workers}", *(["--resume"] if resume else []),
    ]  # fmt: skip


_REFERENCES: dict[tuple[Path, int], Path] = {}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_dataset: Path) -> Any:
    """The uninterrupted run of ``steps`` steps (in this process, one thread like the children)."""

    def get(steps: int) -> Path:
        key = (tiny_dataset, steps)
        if key not in _REFERENCES:
            out = tmp_path_factory.mktemp("reference") / "run"
            with torch_threads(1):
                train(load_train_config("demo", overrides(steps)), out, data_dir=tiny_dataset)
            _REFERENCES[key] = out
        return _REFERENCES[key]

    return get


def assert_equals_reference(run: Path, ref: Path, steps: int) -> None:
    """Bit-identical to the uninterrupted run: weights, ledger, every logged loss and cosine."""
    assert_same_weights(run / "model", ref / "model")
    assert (run / "ledger.csv").read_text() == (ref / "ledger.csv").read_text()
    assert logged_steps(run) == list(range(1, steps + 1))
    assert reproducible_rows(run) == reproducible_rows(ref)
    final = latest_checkpoint(run)
    assert final is not None and final.name == f"step-{steps:08d}"
    got, want = (load_checkpoint(d / "checkpoints" / final.name).state for d in (run, ref))
    assert same_tree(got["data"], want["data"]) and same_tree(got["optimizer"], want["optimizer"])
    assert same_tree(got["harmonizer"], want["harmonizer"])


KINDS = ("outside", "torn", "prune", "metrics", "outside", "rename")
"""The kinds of kill, in turn (any 4 consecutive kills cover 4 kinds); details are random."""


def choose_fault(turn: int, rng: random.Random) -> tuple[str | None, int]:
    """A kill from inside (a fault spec) or from outside (None and a number of new steps)."""
    kind = KINDS[turn % len(KINDS)]
    if kind == "outside":
        return None, rng.randint(1, 3)
    if kind == "torn":
        return f"torn:{rng.choice(TORN_FILES)}:{rng.randint(1, 2)}", 0
    if kind == "metrics":  # the resumed process rewrites metrics.jsonl up to its checkpoint
        return "torn:metrics.jsonl:1", 0
    return f"{kind}:{rng.randint(1, 2)}", 0


def kill_loop(run: Path, data: Path, ref: Path, steps: int, kills: int, workers: list[int]) -> dict:
    rng = random.Random(SEED)
    counts: dict[str, Any] = {"kills": 0, "outside": 0, "inside": 0, "resumes": 0, "laps": 0}
    counts.update(checkpoints_read=0, faults=[])
    history: list[str] = []
    launch = 0

    def run_once(fault: str | None, new_steps: int) -> int:
        nonlocal launch
        checkpoint = latest_checkpoint(run)
        resume = checkpoint is not None
        counts["resumes"] += resume
        before = max([*logged_steps(run), checkpoint_step(checkpoint)])
        proc = start(
            argv(run, data, steps, resume=resume, workers=workers[launch % len(workers)]), fault
        )
        launch += 1
        if fault is None and new_steps and wait_for_step(proc, run, before + new_steps):
            time.sleep(rng.uniform(0.0, 0.5))  # a random moment inside a step or a save
            proc.send_signal(signal.SIGKILL)
        code, out, err = finish(proc)
        name = fault or f"outside+{new_steps}"
        history.append(f"{name} from {checkpoint}: rc {code}")
        if code == KILLED:
            counts["faults"].append(f"{name}@{checkpoint_step(checkpoint)}")
        assert code in (0, KILLED), "\n".join([*history, out, err[-3000:]])
        counts["checkpoints_read"] += len(readable_checkpoints(run))  # none is ever unreadable
        return code

    while counts["kills"] < kills:
        if (run / "model").is_dir() and (run / "summary.json").is_file():
            check(run, ref, steps, history)  # a lap finished: start another
            counts["laps"] += 1
            shutil.rmtree(run)
        fault, new_steps = choose_fault(len(history), rng)
        if run_once(fault, new_steps) == KILLED:
            counts["kills"] += 1
            counts["inside" if fault else "outside"] += 1
    # the last kill: while the finished run writes its summary; then the plain resume
    if run_once("torn:summary.json:1", 0) == KILLED:
        counts["kills"] += 1
        counts["inside"] += 1
        assert run_once(None, 0) == 0
    check(run, ref, steps, history)
    counts["laps"] += 1
    return counts


def check(run: Path, ref: Path, steps: int, history: list[str]) -> None:
    try:
        assert_equals_reference(run, ref, steps)
    except AssertionError as err:
        raise AssertionError("\n".join([*history, str(err)])) from None


def checkpoint_step(path: Path | None) -> int:
    return 0 if path is None else int(path.name.split("-")[1])


def test_kill_loop(tmp_path: Path, tiny_dataset: Path, reference: Any) -> None:
    steps = 12
    counts = kill_loop(tmp_path / "run", tiny_dataset, reference(steps), steps, KILLS, [0])
    record("kill_loop", steps=steps, **counts)
    assert counts["kills"] >= KILLS + 1


@pytest.mark.slow
def test_kill_loop_many(tmp_path: Path, tiny_dataset: Path, reference: Any) -> None:
    steps = 40
    counts = kill_loop(tmp_path / "run", tiny_dataset, reference(steps), steps, SLOW_KILLS, [0, 2])
    record("kill_loop_many", steps=steps, **counts)
    assert counts["kills"] >= SLOW_KILLS + 1


@pytest.mark.parametrize(
    ("sig", "group", "workers"),
    [(signal.SIGTERM, False, 0), (signal.SIGINT, True, 2)],
    ids=["sigterm", "sigint-to-group-with-workers"],
)
def test_graceful_stop_resumes_at_the_same_data_position(
    tmp_path: Path,
    tiny_dataset: Path,
    reference: Any,
    sig: signal.Signals,
    group: bool,
    workers: int,
) -> None:
    """A stop signal mid-epoch: checkpoint, exit 0; the resumed run equals the uninterrupted one.

    SIGINT goes to the whole process group, as Ctrl-C in a terminal does: the loader's worker
    processes get it too and must leave the stop to the main process.
    """
    steps, run = 12, tmp_path / "run"
    ref = reference(steps)
    proc = start(argv(run, tiny_dataset, steps, resume=False, workers=workers), new_session=group)
    assert wait_for_step(proc, run, 3), finish(proc)
    os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
    code, out, err = finish(proc)
    assert code == 0, err
    assert f"stopped by {sig.name} after" in out and "Traceback" not in err
    stopped = latest_checkpoint(run)
    assert stopped is not None
    at = load_checkpoint(stopped).step
    assert 3 <= at < steps and logged_steps(run)[-1] == at
    (position,) = load_checkpoint(stopped).state["data"]  # one per rank
    assert (position["epoch"], position["consumed"]) == (at // EPOCH, at % EPOCH)
    assert not (run / "model").exists()

    with torch_threads(1):
        cfg = load_train_config("demo", [*overrides(steps), f"data.num_workers={workers}"])
        summary = train(cfg, run, data_dir=tiny_dataset, resume=True)
    assert summary["status"] == "finished"
    assert_equals_reference(run, ref, steps)
    record(
        f"graceful_stop_{sig.name}",
        stopped_at=at,
        epoch=position["epoch"],
        batch=position["consumed"],
    )


@pytest.mark.parametrize("curriculum", [False, True], ids=["epoch-sampler", "curriculum-sampler"])
def test_resume_at_an_epoch_boundary_starts_the_next_epoch(curriculum: bool) -> None:
    """A checkpoint taken right after an epoch's last batch resumes with the next epoch's first.

    (Found by the kill loop: the curriculum sampler replayed the finished epoch instead.)
    """
    ids = [f"s{i}" for i in range(12)]

    def stream() -> BatchStream:
        sampler: Any = (
            CurriculumSampler(ids, ConflictLedger(), seed=3) if curriculum else EpochSampler(12, 3)
        )
        data: Any = list(range(12))
        return BatchStream(data, sampler, batch_size=4, collate_fn=list, seed=3)

    whole = stream()
    batches = [next(whole) for _ in range(6)]  # two epochs of three batches
    first = stream()
    for _ in range(3):
        next(first)
    resumed = stream()
    resumed.load_state_dict(first.state_dict())
    assert [next(resumed) for _ in range(3)] == batches[3:]
    assert sorted(i for b in batches[3:] for i in b) == list(range(12))

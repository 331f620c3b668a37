"""`harmonia train` under torchrun (2 CPU processes, gloo): the same run as one process with the
global batch; a stopped run resumes bit-exactly; a killed rank stops the run and the restart
resumes; a run stopped with 2 processes continues in 1.

The equivalence runs use AdamW with ``eps=1`` (for these small gradients an update close to
``lr * m``, linear in the gradient: with the usual eps, AdamW's first steps are ``lr * sign(g)``
and float32 rounding could flip the sign of a near-zero gradient) and no DropToken (each rank
draws its own tokens).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from faults import child_env, record
from harmonia.training.checkpoint import latest_checkpoint
from harmonia.training.config import load_train_config
from harmonia.training.loop import train
from launch import (
    children,
    free_port,
    harmonia_process,
    harmonia_torchrun,
    interrupt,
    rank_env,
    reaping,
    wait_for,
)

EXACT = [
    "train.log_every=1",
    "train.eval_every=0",
    "train.progress=false",
    "train.device=cpu",
    "eval.batch_size=16",
    "model.modalities.video.drop_token=0.0",
    "model.modalities.audio.drop_token=0.0",
    "optim.lr=0.05",
    "optim.eps=1.0",
    "optim.warmup_fraction=0.0",
]
CURRICULUM = """
base: demo
harmonize:
  method: pcgrad
  curriculum: {name: threshold, start: 0.0, end: -1.0, warmup: 0.0, min_keep: 0}
  ledger: {enabled: true}
  sampler: {enabled: true, sharpness: 4.0, warmup: 0.0}
"""
VARIANTS = {
    "vanilla": ["harmonize.method=none"],
    "gr-embedding": ["harmonize.method=pcgrad", "harmonize.space=embedding"],
    "gr-parameters": ["harmonize.method=pcgrad", "harmonize.space=parameters"],
    "curriculum": [],  # CURRICULUM's config file
    "fsdp-gr-parameters": [
        "harmonize.method=pcgrad",
        "harmonize.space=parameters",
        "distributed.strategy=fsdp",
    ],
}


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model" / "model.safetensors")


def max_deviation(a: Path, b: Path) -> float:
    """Largest absolute difference between the final weights of two runs."""
    got, want = weights(a), weights(b)
    assert got.keys() == want.keys()
    return max(float((got[k] - want[k]).abs().max()) for k in want)


def rewind(run: Path) -> None:
    """Make a finished run look as if it had been stopped at its next-to-last checkpoint."""
    shutil.rmtree(run / "model")
    (run / "summary.json").unlink()
    (run / "ledger.csv").unlink(missing_ok=True)
    newest = latest_checkpoint(run)
    assert newest is not None
    shutil.rmtree(newest)


def ledger_rows(run: Path) -> list[list[str]]:
    """RUN/ledger.csv by sample id: id, score, then the counts."""
    lines = (run / "ledger.csv").read_text().splitlines()[1:]
    return sorted(line.split(",") for line in lines)


def run_torchrun(args: list[str], timeout: float = 300) -> str:
    proc = harmonia_torchrun(2, ["train", *args], child_env())
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_two_processes_equal_one_process_with_the_global_batch(
    tmp_path: Path, tiny_dataset: Path, variant: str
) -> None:
    config = "demo"
    if variant == "curriculum":
        config = str(tmp_path / "curriculum.yaml")
        Path(config).write_text(CURRICULUM)
    steps = 10  # more than one epoch of 48 samples: the curriculum sampler draws from the ledger
    common = [*EXACT, *VARIANTS[variant], f"train.steps={steps}", f"train.checkpoint_every={steps}"]
    two = tmp_path / "two"
    out = run_torchrun(
        [config, "--out", str(two), "--data", str(tiny_dataset), "data.batch_size=2", *common]
    )
    assert "finished after 10 steps" in out and out.count("finished") == 1  # rank 0 reports

    one = tmp_path / "one"
    cfg = load_train_config(config, ["data.batch_size=4", *common])
    train(cfg, one, data_dir=tiny_dataset)

    deviation = max_deviation(two, one)
    record(f"torchrun_equivalence_{variant}", max_abs_deviation=deviation)
    assert deviation < 1e-6, deviation  # float32, 10 steps
    summary = json.loads((two / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == steps
    if variant == "curriculum":
        rows_two, rows_one = ledger_rows(two), ledger_rows(one)
        assert [r[0] for r in rows_two] == [r[0] for r in rows_one] and len(rows_one) > 1
        for a, b in zip(rows_two, rows_one, strict=True):
            assert a[2:] == b[2:] and abs(float(a[1]) - float(b[1])) < 1e-5, (a, b)
    if variant == "vanilla":  # the check can fail: local negatives alone give another model
        local = tmp_path / "local"
        train(
            load_train_config(config, ["data.batch_size=2", *common]), local, data_dir=tiny_dataset
        )
        apart = max_deviation(local, one)
        assert apart > 1000 * max(deviation, 1e-9), (apart, deviation)


# ---------------------------------------------------------------- stop, kill, restart, resize
LONG = ["data.batch_size=4", "train.steps=24", "train.checkpoint_every=3", "train.keep_last=2"]
LONG += ["train.log_every=1", "train.eval_every=0", "train.progress=false", "train.device=cpu"]
LONG += ["harmonize.method=pcgrad", "eval.batch_size=16"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, tiny_dataset: Path) -> Path:
    """The 2-process run the interrupted ones must reproduce bit for bit."""
    out = tmp_path_factory.mktemp("torchrun") / "uninterrupted"
    run_torchrun(long_args(out, tiny_dataset))
    return out


def long_args(out: Path, data: Path) -> list[str]:
    """``harmonia train`` arguments (after ``train``) of the 24-step runs."""
    return ["demo", "--out", str(out), "--data", str(data), *LONG]


def start_long(out: Path, data: Path, *extra: str, group: bool = False) -> subprocess.Popen[str]:
    args = ["train", *long_args(out, data), *extra]
    return harmonia_torchrun(2, args, child_env(), new_session=group)


def assert_same_weights(a: Path, b: Path) -> None:
    got, want = weights(a), weights(b)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want), "weights differ"


def test_a_stopped_run_resumes_exactly_with_2_processes_or_continues_with_1(
    tmp_path: Path, tiny_dataset: Path, uninterrupted: Path
) -> None:
    out = tmp_path / "run"
    # SIGTERM to the whole group (agent, ranks, loader workers), as a batch system stops a job
    proc = start_long(out, tiny_dataset, "data.num_workers=1", group=True)
    wait_for(out / "checkpoints" / "step-00000003", proc)
    interrupt(proc, signal.SIGTERM, group=True)
    _, err = proc.communicate(timeout=120)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "stopped by SIGTERM", (summary["status"], err[-2000:])
    stopped_at = summary["steps"]
    assert latest_checkpoint(out) == out / "checkpoints" / f"step-{stopped_at:08d}"
    shutil.copytree(out, tmp_path / "copy")

    resumed = run_torchrun([*long_args(out, tiny_dataset), "--resume"])
    assert "finished after 24 steps" in resumed
    assert_same_weights(out, uninterrupted)

    # the same checkpoint in one process: continues at the global data position, to the end
    cfg = load_train_config("demo", LONG)
    result = train(cfg, tmp_path / "copy", data_dir=tiny_dataset, resume=True)
    assert result["status"] == "finished" and result["world_size"] == 1
    steps = [row["step"] for row in map(json.loads, (tmp_path / "copy" / "metrics.jsonl").open())]
    assert steps == list(range(1, 25))
    record("torchrun_sigterm", stopped_at=stopped_at)


def test_a_killed_rank_stops_the_run_promptly_and_the_restart_resumes(
    tmp_path: Path, tiny_dataset: Path, uninterrupted: Path
) -> None:
    out = tmp_path / "run"
    proc = start_long(out, tiny_dataset)
    wait_for(out / "checkpoints" / "step-00000003", proc)
    ranks = children(proc.pid)
    assert len(ranks) == 2, ranks
    killed = time.monotonic()
    os.kill(ranks[-1], signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    stopped_after = time.monotonic() - killed
    assert proc.returncode != 0
    assert stopped_after < 60, stopped_after  # not the 30-minute collective timeout
    assert "SIGKILL" in err[err.index("Root Cause") :], err[-2000:]
    last = latest_checkpoint(out)
    assert last is not None

    restarted = run_torchrun([*long_args(out, tiny_dataset), "--resume"])
    assert "finished after 24 steps" in restarted
    assert_same_weights(out, uninterrupted)
    record("torchrun_rank_killed", stopped_after_s=round(stopped_after, 1), resumed_from=last.name)


def test_without_an_agent_the_survivor_of_a_killed_rank_exits_with_one_line(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    """Ranks started by hand with torchrun's variables (as some batch systems do): no agent
    stops the survivor, so harmonia must notice the lost peer itself."""
    out, port = tmp_path / "run", free_port()
    args = ["train", *long_args(out, tiny_dataset)]
    procs = [harmonia_process(args, rank_env(child_env(), rank, 2, port)) for rank in range(2)]
    with reaping(procs):
        wait_for(out / "checkpoints" / "step-00000003", procs[0])
        killed = time.monotonic()
        procs[1].kill()
        _, err = procs[0].communicate(timeout=120)
        waited = time.monotonic() - killed
    assert procs[0].returncode == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "harmonia: error: rank 0 of 2: another process"
    ), err
    assert "restart the run with --resume" in lines[0] and "step-000000" in lines[0]
    assert waited < 60, waited
    record("rank_killed_no_agent_trainer", survivor_exit_s=round(waited, 1))


def test_a_ddp_checkpoint_resumes_under_fsdp(
    tmp_path: Path, tiny_dataset: Path, uninterrupted: Path
) -> None:
    """DDP saves the optimizer state by position, FSDP2 loads it by parameter name."""
    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)
    rewind(out)  # resume from the checkpoint before the last: 3 more steps
    resumed = run_torchrun([*long_args(out, tiny_dataset), "--resume", "distributed.strategy=fsdp"])
    assert "finished after 24 steps" in resumed
    assert max_deviation(out, uninterrupted) < 1e-5


def test_an_fsdp_run_resumes_bit_exactly_with_droptoken(tmp_path: Path, tiny_dataset: Path) -> None:
    """Gathering the full model for a checkpoint must not draw from the run's generators."""
    full, half = tmp_path / "full", tmp_path / "half"
    args = ["demo", "--data", str(tiny_dataset), *LONG, "train.steps=4", "train.checkpoint_every=2"]
    run_torchrun(["--out", str(full), *args, "distributed.strategy=fsdp"])
    shutil.copytree(full, half)
    rewind(half)  # back to step 2 of 4
    run_torchrun(["--out", str(half), "--resume", *args, "distributed.strategy=fsdp"])
    assert_same_weights(half, full)

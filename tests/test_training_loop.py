"""The training loop end to end on the tiny dataset: every method, the run directory, resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from safetensors.torch import load_file

from harmonia.errors import CheckpointError, ConfigError, DataError, HarmoniaError
from harmonia.harmonization import METHODS
from harmonia.models import VATT
from harmonia.training.checkpoint import latest_checkpoint, load_checkpoint
from harmonia.training.config import load_train_config
from harmonia.training.logging import read_metrics
from harmonia.training.loop import train

TINY = [
    "data.batch_size=8",
    "train.log_every=1",
    "train.checkpoint_every=2",
    "train.keep_last=3",
    "train.progress=false",
    "eval.batch_size=16",
]


def run(
    out: Path, data: Path, *overrides: str, steps: int = 2, resume: bool = False
) -> dict[str, Any]:
    cfg = load_train_config("demo", [*TINY, f"train.steps={steps}", *overrides])
    return train(cfg, out, data_dir=data, resume=resume)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


@pytest.mark.parametrize(
    "harmonize",
    [[f"harmonize.method={m}"] for m in METHODS]
    + [
        ["harmonize.method=pcgrad", "harmonize.space=parameters"],
        ["harmonize.method=pcgrad", "harmonize.space=batch"],
        [
            "harmonize.method=pcgrad",
            "harmonize.curriculum.name=threshold",
            "harmonize.sampler.enabled=true",
        ],
    ],
    ids=lambda overrides: "-".join(o.split("=")[1] for o in overrides),
)
def test_two_steps_for_each_method(
    tmp_path: Path, tiny_dataset: Path, harmonize: list[str]
) -> None:
    summary = run(tmp_path / "run", tiny_dataset, *harmonize)
    run_dir = tmp_path / "run"
    assert summary["status"] == "finished" and summary["steps"] == 2
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 2
    # two steps learn nothing: every loss is judged near chance, with its numbers
    assert {h["verdict"] for h in summary["learning"].values()} == {"near chance"}
    assert set(summary["learning"]) == {"va", "vt"}

    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("loss/va", "loss/vt", "lr", "throughput", "data_wait", "grad_norm"):
        assert all(isinstance(r[key], float) for r in rows), key
    assert "conflict/va~vt/fraction" in rows[0] and "conflict/va~vt/mean_cos" in rows[0]
    assert "curriculum/kept_fraction" in rows[0]
    per_sample = "harmonize.space=batch" not in harmonize  # batch space: the batch is one
    assert len(rows[0]["hist/va~vt"]) == 40
    assert sum(rows[0]["hist/va~vt"]) == (8 if per_sample else 1)
    assert "val/R@1/va/video->audio" in rows[-1] and "val/loss/vt" in rows[-1]
    peak = load_train_config("demo").optim.lr  # 2 steps: no warm-up, then the cosine
    assert rows[0]["lr"] == pytest.approx(peak) and rows[1]["lr"] < rows[0]["lr"]

    model = VATT.from_pretrained(run_dir / "model")
    assert model.config == load_train_config("demo").model
    assert any((run_dir / "tb").iterdir())
    recorded = load_train_config(run_dir / "config.yaml")
    assert recorded.data.dir == str(tiny_dataset)  # where evaluation will look for the data
    assert recorded.harmonize == load_train_config("demo", harmonize).harmonize
    ledger = (run_dir / "ledger.csv").read_text().splitlines()
    assert ledger[0].startswith("id,score,conflicts,seen,last_step")
    assert len(ledger) == 1 + (16 if per_sample else 0)  # two batches of 8 distinct samples
    assert load_checkpoint(latest_checkpoint(run_dir)).step == 2


def test_training_changes_the_weights_and_lowers_the_loss(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    summary = run(tmp_path / "run", tiny_dataset, "optim.lr=3e-3", "train.eval_every=0", steps=12)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    first, last = rows[0]["loss/total"], rows[-1]["loss/total"]
    assert last < first
    assert summary["bad_steps"] == 0 and summary["skipped_samples"] == 0


@pytest.mark.parametrize(
    "extra",
    [
        ["harmonize.method=none", "data.num_workers=0"],
        [
            "harmonize.method=gradvac",
            "data.num_workers=2",
            "harmonize.curriculum.name=sigmoid",
            "harmonize.sampler.enabled=true",
        ],
    ],
    ids=["plain-shuffle", "workers-curriculum-sampler"],
)
def test_resume_continues_exactly(tmp_path: Path, tiny_dataset: Path, extra: list[str]) -> None:
    """2N steps == N steps + resume + N steps: identical parameters, ledger and optimizer."""
    full, half = tmp_path / "full", tmp_path / "half"
    # 8 steps at batch 8 cross an epoch boundary of the 48 training samples (6 batches)
    run(full, tiny_dataset, *extra, "train.checkpoint_every=4", steps=8)
    shutil.copytree(full, half)
    shutil.rmtree(half / "checkpoints" / "step-00000008")
    shutil.rmtree(half / "model")
    (half / "ledger.csv").unlink()
    summary = run(half, tiny_dataset, *extra, "train.checkpoint_every=4", steps=8, resume=True)
    assert summary["steps"] == 8
    a, b = weights(full / "model"), weights(half / "model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (full / "ledger.csv").read_text() == (half / "ledger.csv").read_text()
    sa = load_checkpoint(full / "checkpoints" / "step-00000008").state
    sb = load_checkpoint(half / "checkpoints" / "step-00000008").state
    assert sa["data"][0]["epoch"] == sb["data"][0]["epoch"] == 1
    for x, y in zip(
        sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values(), strict=True
    ):
        assert torch.equal(x["exp_avg"], y["exp_avg"])
    steps = [r["step"] for r in read_metrics(half / "metrics.jsonl") if "loss/va" in r]
    assert steps == list(range(1, 9))


def test_resume_refuses_a_changed_config(tmp_path: Path, tiny_dataset: Path) -> None:
    run(tmp_path / "run", tiny_dataset)
    with pytest.raises(CheckpointError, match=r"differs from the run's at optim\.lr"):
        run(tmp_path / "run", tiny_dataset, "optim.lr=0.5", resume=True)
    with pytest.raises(HarmoniaError, match="already holds a run"):
        run(tmp_path / "run", tiny_dataset)
    # a run killed before its first checkpoint (or a job script that always resumes) starts
    assert run(tmp_path / "empty", tiny_dataset, resume=True)["status"] == "finished"


def test_resuming_a_finished_run_leaves_it_alone(tmp_path: Path, tiny_dataset: Path) -> None:
    first = run(tmp_path / "run", tiny_dataset)
    files = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    again = run(tmp_path / "run", tiny_dataset, resume=True)
    assert again["status"] == "finished" and again["final_metrics"] == first["final_metrics"]
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == files
    extended = run(tmp_path / "run", tiny_dataset, steps=4, resume=True)  # more steps: continues
    assert extended["steps"] == 4


class NaNObjective:
    """Wraps the real objective; its losses are NaN at the calls listed in ``bad``."""

    calls: ClassVar[int] = 0
    bad: ClassVar[set[int]] = set()

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __call__(self, output: Any) -> dict[str, torch.Tensor]:
        losses = self.inner(output)
        NaNObjective.calls += 1
        if NaNObjective.calls in NaNObjective.bad:
            return {k: v * float("nan") for k, v in losses.items()}
        return losses

    def to(self, device: Any) -> NaNObjective:
        return self


@pytest.fixture
def nan_at(monkeypatch: pytest.MonkeyPatch) -> Any:
    from harmonia.training import components

    real = components.ContrastiveObjective
    initial: list[dict[str, torch.Tensor]] = []
    real_vatt = components.VATT

    def objective(*args: Any, **kwargs: Any) -> NaNObjective:
        return NaNObjective(real(*args, **kwargs))

    def vatt(*args: Any, **kwargs: Any) -> VATT:
        model = real_vatt(*args, **kwargs)
        initial.append({k: v.clone() for k, v in model.state_dict().items()})
        return model

    monkeypatch.setattr(components, "ContrastiveObjective", objective)
    monkeypatch.setattr(components, "VATT", vatt)

    def configure(bad: set[int]) -> list[dict[str, torch.Tensor]]:
        NaNObjective.calls = 0
        NaNObjective.bad = bad
        return initial

    return configure


def test_a_nan_step_is_skipped(tmp_path: Path, tiny_dataset: Path, nan_at: Any) -> None:
    initial = nan_at({1, 2})
    summary = run(tmp_path / "run", tiny_dataset, "train.eval_every=0", steps=3)
    assert summary["status"] == "finished" and summary["bad_steps"] == 2
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["bad_step"] for r in rows] == [1.0, 1.0, 0.0]
    assert rows[0]["loss/va"] is None  # NaN is written as null
    ckpt = latest_checkpoint(tmp_path / "run")
    first = weights(tmp_path / "run" / "checkpoints" / "step-00000002")
    assert all(torch.equal(first[k], initial[0][k]) for k in first)  # no update was applied
    assert ckpt.name == "step-00000003"
    assert not all(torch.equal(v, initial[0][k]) for k, v in weights(ckpt).items())


def test_consecutive_nan_steps_stop_with_a_checkpoint(
    tmp_path: Path, tiny_dataset: Path, nan_at: Any
) -> None:
    initial = nan_at({3, 4, 5})
    with pytest.raises(HarmoniaError, match=r"stopped at step 5: 3 consecutive steps") as exc:
        run(tmp_path / "run", tiny_dataset, "train.max_bad_steps=3", "train.eval_every=0", steps=10)
    assert exc.value.exit_code == 3
    path = latest_checkpoint(tmp_path / "run")
    assert path is not None and path.name == "step-00000005" and str(path) in str(exc.value)
    state = load_checkpoint(path)
    assert state.state["guard"] == {"consecutive": 3, "total": 3}
    after_two = weights(tmp_path / "run" / "checkpoints" / "step-00000002")
    assert all(torch.equal(after_two[k], v) for k, v in weights(path).items())  # last good state
    assert not all(torch.equal(after_two[k], initial[0][k]) for k in after_two)


def test_builds_the_dataset_when_absent(tmp_path: Path, real_source_dir: Path | None) -> None:
    source = str(real_source_dir) if real_source_dir else "builtin"
    cfg = load_train_config(
        "demo",
        [
            *TINY,
            "train.steps=1",
            f"data.dir={tmp_path / 'built'}",
            f"data.source={source}",
            "data.build.sizes={train: 16, val: 8, test: 0}",
        ],
    )
    summary = train(cfg, tmp_path / "run")
    assert summary["steps"] == 1 and (tmp_path / "built" / "summary.json").is_file()


def test_bad_inputs_are_clear_errors(tmp_path: Path, tiny_dataset: Path) -> None:
    with pytest.raises(DataError, match="no dataset at"):
        run(tmp_path / "run", tmp_path / "missing")
    with pytest.raises(DataError, match="has no split 'nope'"):
        run(tmp_path / "run", tiny_dataset, "data.train_split=nope")
    with pytest.raises(ConfigError, match=r"model\.modalities\.video\.shape"):
        run(tmp_path / "run", tiny_dataset, "model.modalities.video.shape=[8, 64, 64, 3]")


@pytest.mark.parametrize("keep", [True, False])
def test_a_cpu_run_keeps_freed_memory_as_configured(
    tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch, keep: bool
) -> None:
    calls: list[int] = []
    monkeypatch.setattr("harmonia.training.loop.keep_freed_memory", lambda: calls.append(1))
    run(tmp_path / "run", tiny_dataset, "train.device=cpu", f"train.keep_freed_memory={keep}")
    assert len(calls) == (1 if keep else 0)

"""The reproduction study: plan, statistics, the clean+extra view, and a smoke run end to end.

The smoke run (one seed, three steps, tiny data) exercises every part of
`harmonia experiment reproduce`: shared datasets, the process pool, the per-run cache and resume,
figures and RESULTS.md. Its numbers mean nothing; the assertions are about the pipeline.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path
from typing import Any

import pytest

from harmonia.cli import main
from harmonia.data import ShardDataset, build_dataset, load_labels, read_index
from harmonia.data.config import BuildConfig
from harmonia.data.sources import SourceData
from harmonia.experiments.analysis import Stat, paired
from harmonia.experiments.datasets import extra_view
from harmonia.experiments.plan import BUDGETS, VARIANTS, Budget, RunSpec, make_plan
from harmonia.experiments.runner import fingerprint, run_all, run_one
from harmonia.experiments.study import reproduce
from harmonia.experiments.verdicts import verdict


def test_the_full_plan_covers_every_cell_of_the_study() -> None:
    budget = BUDGETS["full"]
    plan = make_plan(budget)
    names = [r.name for r in plan.runs]
    assert len(names) == len(set(names))
    assert budget.seeds >= 3
    ablation = plan.by_study("ablation")
    cells = {(r.variant, r.noise) for r in ablation}
    assert cells == {(v, n) for v in VARIANTS for n in (0.0, 0.2, 0.4)}
    for cell in cells:
        seeds = sorted(r.seed for r in ablation if (r.variant, r.noise) == cell)
        assert seeds == list(range(budget.seeds))
    assert {r.space for r in plan.by_study("space")} == {"parameters"}
    assert {r.backbone for r in plan.by_study("backbone")} == {"modality_specific"}
    scaling = plan.by_study("scaling")
    assert {r.variant for r in scaling} == {"baseline", "gr+cl"}
    assert all(r.data == "clean+extra" and r.noise == 0.0 for r in scaling)
    keys = {d.key for d in plan.datasets}
    assert all(r.dataset in keys or r.dataset.removesuffix("+extra") in keys for r in plan.runs)
    clean = next(d for d in plan.datasets if d.noise == 0.0)
    assert clean.extra == budget.train and clean.extra_noise == 0.5


def test_a_budget_without_clean_data_is_refused() -> None:
    with pytest.raises(ValueError, match="noise rate 0"):
        Budget(
            "x", seeds=1, steps=1, train=1, val=1, test=1, noise_rates=(0.2,), contrast_noise=0.2
        )


def test_stat_and_paired_differences_match_a_direct_computation() -> None:
    base = [0.50, 0.55, 0.45, 0.52]
    var = [0.58, 0.62, 0.53, 0.51]

    def runs(values: list[float]) -> list[dict[str, Any]]:
        return [{"spec": {"seed": s}, "value": v} for s, v in enumerate(values)]

    stat = Stat.of(base)
    assert stat is not None
    assert stat.mean == pytest.approx(statistics.mean(base))
    assert stat.std == pytest.approx(statistics.stdev(base))
    # seed 3 is missing from the variant: the pairing must drop it from both arms
    delta = paired(runs(base), runs(var[:3]), lambda r: r["value"])
    assert delta is not None
    diffs = [v - b for v, b in zip(var[:3], base[:3], strict=True)]
    assert delta.diff.n == 3
    assert delta.diff.mean == pytest.approx(statistics.mean(diffs))
    assert delta.diff.std == pytest.approx(statistics.stdev(diffs))
    assert delta.wins == 3
    pooled = math.sqrt((statistics.stdev(base[:3]) ** 2 + statistics.stdev(var[:3]) ** 2) / 2)
    assert delta.effect == pytest.approx(statistics.mean(diffs) / pooled)
    assert verdict(delta) == "helps"
    assert verdict(paired(runs(var[:3]), runs(base[:3]), lambda r: r["value"])) == "hurts"
    mixed = paired(runs(base), runs(var), lambda r: r["value"])  # seed 3: the variant loses
    assert verdict(mixed) == "no clear effect"
    one = paired(runs(base[:1]), runs(var[:1]), lambda r: r["value"])
    assert verdict(one) == "too few seeds"


def test_the_extra_view_trains_on_clean_then_extra_clips(
    tmp_path: Path, data_source: SourceData
) -> None:
    config = BuildConfig(
        seed=0, sizes={"train": 12, "val": 4, "test": 4}, noise=0.0, extra=10, extra_noise=0.5
    )
    dataset = tmp_path / "d"
    build_dataset(config, data_source, dataset, workers=1, progress=False)
    view = extra_view(dataset, tmp_path / "view")
    records = read_index(view, "train")
    originals = read_index(dataset)
    train_ids = [r["id"] for r in originals if r["split"] == "train"]
    extra_ids = [r["id"] for r in originals if r["split"] == "extra"]
    assert [r["id"] for r in records] == train_ids + extra_ids
    labels, truth = load_labels(view), load_labels(dataset)
    flags = ("misaligned_text", "misaligned_audio")
    assert all(labels[i][f] == truth[i][f] for i in truth for f in flags)
    assert any(labels[i]["misaligned_text"] or labels[i]["misaligned_audio"] for i in extra_ids)
    assert not any(labels[i]["misaligned_text"] or labels[i]["misaligned_audio"] for i in train_ids)
    merged = ShardDataset(view, "train")
    sample = merged[merged.index_of(extra_ids[-1])]
    assert sample["id"] == extra_ids[-1] and sample["video"].shape[0] == config.media.frames
    assert extra_view(dataset, tmp_path / "view") == tmp_path / "view"  # reused, not rewritten


SMOKE = BUDGETS["smoke"]


def _smoke(root: Path, source: str, logs: list[str], report_only: bool = False) -> dict[str, Any]:
    return reproduce(
        SMOKE,
        root / "work",
        results_md=root / "docs" / "RESULTS.md",
        figures_dir=root / "docs" / "figures",
        jobs=2,
        source=source,
        command="harmonia experiment reproduce --budget smoke",
        report_only=report_only,
        log=logs.append,
    )


@pytest.fixture(scope="module")
def smoke_study(
    tmp_path_factory: pytest.TempPathFactory, real_source_dir: Path | None
) -> dict[str, Any]:
    source = str(real_source_dir) if real_source_dir else "builtin"
    root = tmp_path_factory.mktemp("study")
    logs: list[str] = []
    outcome = _smoke(root, source, logs)
    return {"root": root, "outcome": outcome, "logs": logs, "source": source}


def test_smoke_study_runs_every_run_and_writes_the_page(smoke_study: dict[str, Any]) -> None:
    root, outcome = smoke_study["root"], smoke_study["outcome"]
    plan = make_plan(SMOKE)
    assert outcome["failed"] == []
    assert [r["name"] for r in outcome["results"]] == [r.name for r in plan.runs]
    for result in outcome["results"]:
        run_dir = root / "work" / "runs" / result["name"]
        assert (
            json.loads((run_dir / "result.json").read_text())["fingerprint"]
            == result["fingerprint"]
        )
        assert result["train"]["steps"] == SMOKE.steps
        assert 0.0 <= result["eval"]["zero_shot"]["digit"]["accuracy"] <= 1.0
    noisy = [
        r for r in outcome["results"] if r["spec"]["noise"] > 0 and r["spec"]["study"] == "ablation"
    ]
    assert all(sum(len(v) for k, v in r["ledger"].items() if k != "clean") > 0 for r in noisy)
    text = (root / "docs" / "RESULTS.md").read_text()
    for section in (
        "## The claims, and what a practitioner would do instead",
        "## What holds on AV-MNIST-T",
        "## Ablation",
        "## GR in embedding vs exact parameter",
        "## Modality-agnostic vs modality-specific",
        "## Scaling",
        "## Noise detection",
        "## Reproduce",
        "harmonia experiment reproduce --budget smoke",
    ):
        assert section in text
    for name in ("conflict_scores.png", "metric_vs_noise.png"):
        png = root / "docs" / "figures" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"figures/{name}" in text


def test_a_rerun_reuses_finished_runs_and_redoes_only_the_missing_one(
    smoke_study: dict[str, Any],
) -> None:
    root, first = smoke_study["root"], smoke_study["outcome"]
    victim = first["results"][5]
    (root / "work" / "runs" / victim["name"] / "result.json").unlink()
    logs: list[str] = []
    report = _smoke(root, smoke_study["source"], logs, report_only=True)
    assert report["missing"] == [victim["name"]]
    assert not any(r.get("_fresh") for r in report["results"])
    text = (root / "docs" / "RESULTS.md").read_text()
    assert "1 not run" in text and f"- `{victim['name']}`" in text

    logs.clear()
    again = _smoke(root, smoke_study["source"], logs)
    assert again["missing"] == []
    assert any("reused" in line for line in logs)
    assert not any("built in" in line for line in logs)
    total = len(first["results"])
    assert f"{total} runs: {total - 1} cached, 1 to run with 2 processes" in logs
    fresh = [r["name"] for r in again["results"] if r.get("_fresh")]
    assert fresh == [victim["name"]]
    redone = next(r for r in again["results"] if r["name"] == victim["name"])
    assert redone["fingerprint"] == victim["fingerprint"]
    assert redone["eval"]["zero_shot"] == victim["eval"]["zero_shot"]  # same model again


def test_cli_rejects_a_bad_job_count(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["experiment", "reproduce", "--jobs", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["harmonia: error: --jobs must be >= 1, got 0"]


def test_a_run_dir_of_another_config_is_retrained_not_resumed(smoke_study: dict[str, Any]) -> None:
    root, first = smoke_study["root"], smoke_study["outcome"]
    spec = make_plan(SMOKE).runs[0]
    run_dir = root / "work" / "runs" / spec.name
    dataset = root / "work" / "data" / spec.dataset
    shorter = dataclasses.replace(SMOKE, steps=SMOKE.steps - 1)
    result = run_one(spec, shorter, dataset, run_dir)
    assert result["train"]["steps"] == shorter.steps  # a resume would have kept the longer run
    assert result["fingerprint"] != first["results"][0]["fingerprint"]


def test_filtering_runs_retrain_without_their_baselines_suspects(
    smoke_study: dict[str, Any],
) -> None:
    root, outcome = smoke_study["root"], smoke_study["outcome"]
    runs = root / "work" / "runs"
    filtered = [r for r in outcome["results"] if r["spec"]["variant"] == "filter"]
    assert filtered and len(filtered) == len(SMOKE.noise_rates) * SMOKE.seeds
    for result in filtered:
        spec = RunSpec(**result["spec"])
        summary = json.loads((runs / spec.name / "summary.json").read_text())
        # a missing ledger fails the run, so this also shows it waited for its baseline
        assert summary["dropped_suspects"] == round(0.3 * SMOKE.train)
        assert spec.ledger_from == dataclasses.replace(spec, variant="baseline").name
    # baseline-based runs keep a trace, so every ledger score is replayed on the same observations
    traced = [r for r in outcome["results"] if r["spec"]["variant"] in ("baseline", "filter")]
    assert all(set(r["ledger_scores"]) == {"conflict", "gradient_norm", "loss"} for r in traced)


def test_a_filtering_run_is_identified_by_its_ledgers_content(tmp_path: Path) -> None:
    ledger = tmp_path / "a" / "ledger.csv"
    ledger.parent.mkdir()
    ledger.write_text("id,score,conflicts,seen,last_step,rank\nx,-0.5,1,1,0,1\n")
    config = {"data": {"dir": "d", "drop_suspects": {"ledger": str(ledger), "fraction": 0.3}}}
    first = fingerprint(config, "sum")
    moved = tmp_path / "b" / "ledger.csv"
    moved.parent.mkdir()
    moved.write_bytes(ledger.read_bytes())
    config_moved = {"data": {"dir": "d", "drop_suspects": {"ledger": str(moved), "fraction": 0.3}}}
    assert fingerprint(config_moved, "sum") == first
    ledger.write_text("id,score,conflicts,seen,last_step,rank\nx,-0.9,1,1,0,1\n")
    assert fingerprint(config, "sum") != first


def test_a_filtering_run_without_its_baseline_fails_with_a_reason(
    smoke_study: dict[str, Any], tmp_path: Path
) -> None:
    spec = RunSpec("ablation", "filter", 0.4, 0, "noise40")
    dataset = smoke_study["root"] / "work" / "data" / "noise40"
    results = run_all([(spec, dataset, tmp_path / "runs" / spec.name)], SMOKE, jobs=1)
    assert results[spec.name]["error"] == f"needs {spec.ledger_from}, not planned"

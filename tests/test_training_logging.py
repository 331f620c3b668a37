"""Metric logging: JSONL rows, cosine histograms, TensorBoard events, resume truncation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harmonia.training.logging import (
    MetricAccumulator,
    MetricLogger,
    cosine_histogram,
    read_metrics,
)


def test_histogram_has_40_bins_over_minus_one_to_one() -> None:
    counts = cosine_histogram(torch.tensor([-1.0, -0.99, 0.0, 0.01, 0.99, 1.0, float("nan")]))
    assert len(counts) == 40 and sum(counts) == 6
    assert counts[0] == 2 and counts[20] == 2 and counts[39] == 2


def test_accumulator_means_skip_non_finite() -> None:
    acc = MetricAccumulator()
    acc.add({"loss/va": 1.0, "lr": 0.1})
    acc.add({"loss/va": float("nan"), "lr": 0.3})
    acc.add_values("hist/va~vt", torch.tensor([0.5, -0.5]))
    acc.add_values("hist/va~vt", torch.tensor([0.1]))
    acc.add({"never": float("inf")})
    means = acc.means()
    assert means.pop("never") != means.get("never")  # NaN: no finite value in the interval
    assert means == pytest.approx({"loss/va": 1.0, "lr": 0.2})
    assert acc.histograms()["hist/va~vt"].numel() == 3
    acc.reset()
    assert acc.means() == {} and acc.histograms() == {}


def test_logger_writes_jsonl_and_tensorboard(tmp_path: Path) -> None:
    with MetricLogger(tmp_path) as log:
        for step in (1, 2, 3):
            log.log(
                step,
                {"loss/va": 1.0 / step, "bad": float("inf")},
                {"hist/va~vt": torch.linspace(-1, 1, 10)},
            )
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[1]["loss/va"] == 0.5 and rows[1]["bad"] is None
    assert sum(rows[0]["hist/va~vt"]) == 10
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_resume_drops_rows_after_the_checkpoint(tmp_path: Path) -> None:
    with MetricLogger(tmp_path, tensorboard=False) as log:
        for step in range(1, 6):
            log.log(step, {"x": float(step)})
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "x"')  # torn line from a killed run
    with MetricLogger(tmp_path, resume_step=3, tensorboard=False) as log:
        log.log(4, {"x": 40.0})
    assert [(r["step"], r["x"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == [
        (1, 1.0),
        (2, 2.0),
        (3, 3.0),
        (4, 40.0),
    ]


def test_fresh_run_starts_a_new_file(tmp_path: Path) -> None:
    with MetricLogger(tmp_path, tensorboard=False) as log:
        log.log(1, {"x": 1.0})
    with MetricLogger(tmp_path, tensorboard=False) as log:
        log.log(1, {"x": 2.0})
    assert [r["x"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [2.0]

"""`harmonia demo`, the main job, end to end on a tiny build: data -> 2 runs -> eval -> audit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harmonia.cli import main
from harmonia.cli.demo import TABLE_ROWS


@pytest.mark.usefixtures("real_source_dir")
def test_demo_trains_evaluates_audits_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], real_source_dir: Path | None
) -> None:
    source = ["--source", str(real_source_dir)] if real_source_dir else ["--source", "builtin"]
    argv = [
        "demo",
        "--run-dir",
        str(tmp_path / "demo"),
        *source,
        "--train",
        "48",
        "--val",
        "16",
        "--test",
        "24",
        "train.steps=2",
        "train.progress=false",
        "eval.max_samples=16",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    root = tmp_path / "demo"
    comparison = json.loads((root / "comparison.json").read_text())
    assert set(comparison["runs"]) == {"baseline", "harmonized"}
    for label, _ in TABLE_ROWS:
        assert label in out
        values = comparison["metrics"][label]
        top = float("inf") if "loss" in label else 1.0  # losses are >= 0, the rest fractions
        assert all(v is None or 0.0 <= v <= top for v in values.values()), label
    for run in ("baseline", "harmonized"):
        assert (root / run / "model" / "model.safetensors").is_file()
        assert json.loads((root / run / "eval.json").read_text())["split"] == "test"
    html = (root / "harmonized" / "audit.html").read_text()
    assert "<html" in html.lower()

    # A second demo reuses the dataset and both finished runs instead of training again.
    assert main(argv) == 0
    again = capsys.readouterr().out
    assert "using the dataset already in" in again
    assert again.count("already trained") == 2


def test_demo_fetches_real_sources_first_and_falls_back_only_when_that_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from harmonia.cli import demo
    from harmonia.data import fetch
    from harmonia.errors import DataError

    monkeypatch.delenv("HARMONIA_DATA", raising=False)
    monkeypatch.setenv("HARMONIA_CACHE", str(tmp_path / "cache"))
    calls: list[Path] = []

    def offline(dest: Path) -> Path:
        calls.append(dest)
        raise DataError("cannot reach the MNIST mirror (offline)")

    monkeypatch.setattr(fetch, "fetch_sources", offline)
    assert demo.demo_source(None) == "builtin"
    assert calls == [tmp_path / "cache"]
    assert "fetch failed: cannot reach the MNIST mirror" in capsys.readouterr().err

    monkeypatch.setattr(fetch, "fetch_sources", lambda dest: calls.append(dest) or dest)
    assert demo.demo_source(None) is None  # fetched: build from the cache
    assert demo.demo_source("some/dir") == "some/dir"  # an explicit source is never replaced
    monkeypatch.setenv("HARMONIA_DATA", str(tmp_path))
    assert demo.demo_source(None) is None and len(calls) == 2

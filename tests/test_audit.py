"""The audit report: sections present, self-contained (no external src/href), data escaped,
suspects ordered by the ledger with their media, and the score CSV beside it."""

from __future__ import annotations

import csv
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from harmonia.audit import build_audit, plots
from harmonia.cli import main
from harmonia.data import load_labels
from harmonia.evaluation.labels import noise_flag
from harmonia.harmonization.ledger import ConflictLedger
from harmonia.training.health import judge
from harmonia.training.logging import MetricLogger

EVIL_ID = '<img src="x" onerror="alert(1)">'
SECTIONS = ("overview", "training", "cosines", "curriculum", "scores", "suspects")


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.links: list[tuple[str, str, str]] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        d = dict(attrs)
        self.tags.append((tag, d))
        if d.get("id"):
            self.ids.append(str(d["id"]))
        for name in ("src", "href"):
            if d.get(name) is not None:
                self.links.append((tag, name, str(d[name])))


def _parse(path: Path) -> _Collect:
    parser = _Collect()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


@pytest.fixture(scope="module")
def audit_run(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run dir as the trainer leaves it: config, metrics.jsonl (with histograms), ledger."""
    run = tmp_path_factory.mktemp("auditrun")
    (run / "config.yaml").write_text(
        yaml.safe_dump({"data": {"dir": str(tiny_dataset)}, "harmonize": {"method": "pcgrad"}})
    )
    gen = torch.Generator().manual_seed(0)
    with MetricLogger(run, tensorboard=False) as log:
        for step in range(0, 40, 4):
            cos = (torch.randn(32, generator=gen) * 0.3 + step / 80).clamp(-1, 1)
            log.log(
                step,
                {
                    "loss/va": 3.0 - step / 20,
                    "loss/vt": 2.5 - step / 30,
                    "conflict/va~vt/fraction": float((cos < 0).float().mean()),
                    "conflict/va~vt/mean_cos": float(cos.mean()),
                    "curriculum/kept_fraction": min(1.0, 0.5 + step / 40),
                },
                {"hist/va~vt": cos},
            )
    labels = load_labels(tiny_dataset, "train")
    ids = sorted(labels)
    rng = np.random.default_rng(0)
    scores = [(-0.6 if noise_flag(labels[i]) else 0.4) + 0.05 * rng.random() for i in ids]
    ledger = ConflictLedger()
    ledger.update([*ids, EVIL_ID], torch.tensor([*scores, 0.9]), step=36)
    ledger.to_csv(run / "ledger.csv")
    learning = {
        name: judge(name, train, held_out, 32, 64).to_dict()
        for name, train, held_out in (("va", 1.5, 5.2), ("vt", 0.4, 1.0))
    }
    (run / "summary.json").write_text(
        json.dumps({"steps": 40, "skipped": [], "learning": learning})
    )
    (run / "eval.json").write_text(
        json.dumps({"split": "test", "zero_shot": {"digit": {"accuracy": 0.25}}})
    )
    return run


def test_report_has_every_section_and_is_self_contained(audit_run: Path, tmp_path: Path) -> None:
    out = build_audit(audit_run, top_k=5, out=tmp_path / "report.html")
    assert out.html.is_file() and out.csv == tmp_path / "report_scores.csv"
    parsed = _parse(out.html)
    assert set(SECTIONS) <= set(parsed.ids)
    for tag, attr, value in parsed.links:
        assert value.startswith(("data:", "#")), f"external {attr} on <{tag}>: {value[:60]}"
    text = out.html.read_text(encoding="utf-8")
    assert "zero-shot digit accuracy" in text  # eval.json summarized in the overview
    assert "Learning health" in text and "memorizes" in text and "learned (76%" in text
    assert text.count('src="data:image/png;base64,') >= 5 + 4  # suspects' strips + figures


def test_suspects_follow_the_ledger_with_media_and_truth(
    audit_run: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    k = 6
    out = build_audit(audit_run, top_k=k, out=tmp_path / "r.html")
    parsed = _parse(out.html)
    strips = [a for t, a in parsed.tags if t == "img" and a.get("class") == "strip"]
    audios = [a for t, a in parsed.tags if t == "audio"]
    assert len(strips) == k and len(audios) == k
    assert all(str(a["src"]).startswith("data:audio/wav;base64,") for a in audios)
    text = out.html.read_text(encoding="utf-8")
    expected = [e.id for e in ConflictLedger.from_csv(audit_run / "ledger.csv").ranking(k)]
    positions = [text.index(f"<b>{sample_id}</b>") for sample_id in expected]
    assert positions == sorted(positions)
    # the lowest scores are the misaligned samples (see the fixture), and the report says so
    assert text.count("misaligned: ") >= k and "badge ok" not in text.split('id="suspects"')[1]


def test_score_csv_joins_ground_truth(audit_run: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    out = build_audit(audit_run, top_k=3, out=tmp_path / "r.html")
    with out.csv.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    labels = load_labels(tiny_dataset)
    assert len(rows) == len(load_labels(tiny_dataset, "train")) + 1
    assert [r["rank"] for r in rows] == [str(i) for i in range(1, len(rows) + 1)]
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores)
    for row in rows:
        if row["id"] == EVIL_ID:
            assert row["misaligned"] == "" and row["digit"] == ""
        else:
            assert row["misaligned"] == str(int(bool(noise_flag(labels[row["id"]]))))
            assert row["digit"] == str(labels[row["id"]]["digit"])


def test_data_from_the_run_is_escaped(audit_run: Path, tmp_path: Path) -> None:
    out = build_audit(audit_run, top_k=100, out=tmp_path / "r.html")
    text = out.html.read_text(encoding="utf-8")
    assert EVIL_ID not in text
    assert "&lt;img src=&quot;x&quot; onerror=&quot;alert(1)&quot;&gt;" in text
    assert all(t != "img" or "onerror" not in a for t, a in _parse(out.html).tags)


def test_report_without_dataset_or_curriculum_still_renders(
    audit_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "bare"
    run.mkdir()
    (run / "ledger.csv").write_bytes((audit_run / "ledger.csv").read_bytes())
    rows = [json.loads(x) for x in (audit_run / "metrics.jsonl").read_text().splitlines()]
    (run / "metrics.jsonl").write_text(
        "".join(
            json.dumps({k: v for k, v in r.items() if "curriculum" not in k}) + "\n" for r in rows
        )
        + '{"step": 40, "loss/va": 0.'  # a run killed mid-write
    )
    out = build_audit(run, top_k=2)
    assert out.html == run / "audit.html"
    text = out.html.read_text(encoding="utf-8")
    assert "no curriculum in this run" in text and "unknown" in text
    assert set(SECTIONS) <= set(_parse(out.html).ids)


def test_vanished_dataset_still_gives_a_report(audit_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "moved"
    run.mkdir()
    (run / "ledger.csv").write_bytes((audit_run / "ledger.csv").read_bytes())
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"dir": str(tmp_path / "gone")}}))
    text = build_audit(run, top_k=2).html.read_text(encoding="utf-8")
    assert "gone not found (pass --data)" in text


def test_loss_plot_leaves_out_the_total_only_when_parts_exist() -> None:
    parts = [{"step": s, "loss/total": 7.0, "loss/va": 3.5, "loss/vt": 3.5} for s in range(3)]
    fig = plots.loss_figure(parts)
    assert fig is not None
    assert sorted(t.get_text() for t in fig.axes[0].get_legend().get_texts()) == ["va", "vt"]
    fig = plots.loss_figure([{"step": s, "loss/total": 7.0} for s in range(3)])
    assert fig is not None
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["total"]


def test_cosine_heatmap_reads_the_logged_histograms() -> None:
    records = [{"step": s, "hist/va~vt": [0] * 39 + [s + 1]} for s in range(3)]
    assert plots.cosine_heatmap_figure(records) is not None
    assert plots.cosine_heatmap_figure([{"step": 0, "loss/va": 1.0}]) is None
    assert plots.curriculum_figure([{"step": 0, "loss/va": 1.0}]) is None


def test_audit_cli(audit_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "sub" / "audit.html"
    assert main(["audit", str(audit_run), "--top", "3", "--out", str(target)]) == 0
    assert target.is_file() and (tmp_path / "sub" / "audit_scores.csv").is_file()
    assert "3 suspects shown" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, message in (
        (["audit", str(tmp_path / "missing")], "run directory not found"),
        (["audit", str(empty)], "nothing to audit"),
        (["audit", str(audit_run), "--top", "-1"], "--top"),
        (["audit", str(audit_run), "--data", str(empty)], "index.jsonl"),
    ):
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1

"""Which per-sample noisiness score finds misaligned triplets? Replayed from conflict traces.

A run trained with ``harmonize.ledger.trace=true`` writes every per-sample observation (losses,
gradient Gram) to ``conflict_trace.csv``. This module derives, from the same observations, the
paper's gradient-conflict score and its alternatives, and scores each against the dataset's
ground-truth misalignment flags (AUROC), so that definitions (cosine vs. raw inner product,
EMA vs. a late-training window) are compared on identical data without retraining.

`harmonia experiment conflict-scores RUN [RUN ...]` prints the table (mean and spread over the
runs); docs/curriculum.md shows it with the commands that produced the runs.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harmonia.evaluation.labels import AUDIO_FLAG, TEXT_FLAG, noise_flag
from harmonia.evaluation.noise_detection import DetectionResult, detection_metrics
from harmonia.harmonization.stats import NoisinessScore, noisiness_scores
from harmonia.training.layout import SUMMARY_FILE, TRACE_CSV

TARGETS: dict[str, tuple[str, ...]] = {"caption": (TEXT_FLAG,), "audio": (AUDIO_FLAG,)}
"""Which ground-truth flags each column of the table is scored against."""


@dataclass(frozen=True)
class Trace:
    """A run's observations as arrays, one entry per (step, sample)."""

    steps: np.ndarray
    ids: np.ndarray
    columns: dict[str, np.ndarray]
    total_steps: int

    @classmethod
    def read(cls, run_dir: Path) -> Trace:
        """``RUN/conflict_trace.csv``; the last row wins for a (step, id) replayed by a resume."""
        rows: dict[tuple[int, str], list[str]] = {}
        with (run_dir / TRACE_CSV).open(encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader)
            for row in reader:
                rows[int(row[0]), row[1]] = row[2:]
        keys = sorted(rows)
        values = np.array([rows[k] for k in keys], dtype=np.float64).reshape(len(keys), -1)
        summary_file = run_dir / SUMMARY_FILE  # a run still training: its steps so far
        summary = json.loads(summary_file.read_text("utf-8")) if summary_file.is_file() else {}
        return cls(
            np.array([k[0] for k in keys]),
            np.array([k[1] for k in keys], dtype=object),
            {name: values[:, j] for j, name in enumerate(header[2:])},
            int(summary.get("target_steps") or max(k[0] for k in keys) + 1),
        )

    def losses(self) -> list[str]:
        return [c[len("loss_") :] for c in self.columns if c.startswith("loss_")]

    def gram(self, a: str, b: str) -> np.ndarray:
        key = f"gram_{a}_{b}" if f"gram_{a}_{b}" in self.columns else f"gram_{b}_{a}"
        return self.columns[key]


def _ema(trace: Trace, values: np.ndarray, decay: float, after: float = 0.0) -> dict[str, float]:
    """Per-id EMA of ``values`` in step order (the ledger's rule), over steps >= after * total."""
    out: dict[str, float] = {}
    keep = trace.steps >= after * trace.total_steps
    for sample_id, value in zip(trace.ids[keep], values[keep], strict=True):
        if not math.isfinite(value):
            continue
        old = out.get(sample_id)
        out[sample_id] = value if old is None else decay * old + (1 - decay) * value
    return out


def _per_step_scale(trace: Trace, values: np.ndarray) -> np.ndarray:
    """``values`` over the median non-zero magnitude of its step (removes the shrinking scale)."""
    out = np.zeros_like(values)
    for step in np.unique(trace.steps):
        rows = trace.steps == step
        present = np.sort(np.abs(values[rows][values[rows] != 0]))
        if present.size:  # the lower median of the non-zero values, as the ledger's score
            out[rows] = values[rows] / present[(present.size - 1) // 2]
    return out


def _replayed(trace: Trace, kind: NoisinessScore, a: str, b: str) -> np.ndarray:
    """The ledger's per-observation score ``kind``, replayed with its own function step by step."""
    gram = np.stack(
        [
            np.stack([trace.gram(a, a), trace.gram(a, b)], -1),
            np.stack([trace.gram(a, b), trace.gram(b, b)], -1),
        ],
        -2,
    )
    losses = np.stack([trace.columns[f"loss_{a}"], trace.columns[f"loss_{b}"]], -1)
    out = np.empty(len(trace.steps))
    for step in np.unique(trace.steps):
        rows = trace.steps == step
        scores = noisiness_scores(
            torch.from_numpy(gram[rows]), kind, losses=torch.from_numpy(losses[rows])
        )
        out[rows] = scores.numpy()
    return out


LEDGER_SCORES: tuple[NoisinessScore, ...] = ("conflict", "gradient_norm", "loss")
"""The ledger's scores, each replayed from the same trace by `ledger_detection`."""


def ledger_detection(
    trace: Trace,
    labels: Mapping[str, Mapping[str, Any]],
    a: str = "va",
    b: str = "vt",
    decay: float = 0.9,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Score -> target -> detection metrics (AUROC, AP, precision at k) of each ledger score.

    Every score is the EMA the ledger would hold at the end of the traced run had it recorded
    that score, so the scores are compared on identical observations.
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for kind in LEDGER_SCORES:
        suspicion = _negated(_ema(trace, _replayed(trace, kind, a, b), decay))
        found = _detection(suspicion, labels)
        out[kind] = {target: result.to_dict() for target, result in found.items()}
    return out


Score = Callable[[Trace], dict[str, float]]
"""A trace -> per-id suspicion (higher = more suspected misaligned)."""


def _negated(scores: dict[str, float]) -> dict[str, float]:
    return {k: -v for k, v in scores.items()}


def score_variants(a: str, b: str, decay: float = 0.9) -> dict[str, Score]:
    """The scores compared, for losses ``a`` and ``b`` (suspicion: higher = more suspect)."""

    def cosine(t: Trace) -> np.ndarray:
        denom = np.sqrt(np.clip(t.gram(a, a), 0, None) * np.clip(t.gram(b, b), 0, None))
        return np.where(denom > 0, t.gram(a, b) / np.where(denom > 0, denom, 1.0), 0.0)

    return {
        "gradient cosine, EMA (the paper's conflict score; ledger score 'conflict')": lambda t: (
            _negated(_ema(t, cosine(t), decay))
        ),
        "gradient cosine, second half only": lambda t: _negated(
            _ema(t, cosine(t), decay, after=0.5)
        ),
        "gradient inner product, EMA": lambda t: _negated(_ema(t, t.gram(a, b), decay)),
        "gradient inner product / step median, EMA": lambda t: _negated(
            _ema(t, _per_step_scale(t, t.gram(a, b)), decay)
        ),
        "gradient inner product / step median, second half": lambda t: _negated(
            _ema(t, _per_step_scale(t, t.gram(a, b)), decay, after=0.5)
        ),
        f"gradient norm {a} / step median, EMA": lambda t: _ema(
            t, _per_step_scale(t, np.sqrt(np.clip(t.gram(a, a), 0, None))), decay
        ),
        f"gradient norm {b} / step median, EMA": lambda t: _ema(
            t, _per_step_scale(t, np.sqrt(np.clip(t.gram(b, b), 0, None))), decay
        ),
        "relative gradient norm, max over losses, EMA (ledger score 'gradient_norm')": (
            lambda t: _negated(_ema(t, _replayed(t, "gradient_norm", a, b), decay))
        ),
        "relative loss, max over losses, EMA (ledger score 'loss')": (
            lambda t: _negated(_ema(t, _replayed(t, "loss", a, b), decay))
        ),
        f"loss {a}, EMA (online loss)": lambda t: _ema(t, t.columns[f"loss_{a}"], decay),
        f"loss {b}, EMA (online loss)": lambda t: _ema(t, t.columns[f"loss_{b}"], decay),
    }


def _detection(
    suspicion: Mapping[str, float], labels: Mapping[str, Mapping[str, Any]]
) -> dict[str, DetectionResult]:
    """Detection metrics of a suspicion against each target's flags (unlabelled ids left out)."""
    out: dict[str, DetectionResult] = {}
    ids = [i for i in suspicion if i in labels]
    for target, flags in TARGETS.items():
        truth = [noise_flag(labels[i], flags) for i in ids]
        keep = [j for j, t in enumerate(truth) if t is not None]
        if keep:
            values = np.array([suspicion[ids[j]] for j in keep])
            noisy = [bool(truth[j]) for j in keep]
            out[target] = detection_metrics(values, noisy, higher_is_noisier=True)
    return out


def detect(
    suspicion: Mapping[str, float], labels: Mapping[str, Mapping[str, Any]]
) -> dict[str, float | None]:
    """AUROC of a suspicion against each target's flags (ids without labels are left out)."""
    found = _detection(suspicion, labels)
    return {target: found[target].auroc if target in found else None for target in TARGETS}


def compare(
    runs: Sequence[tuple[Trace, Mapping[str, Mapping[str, Any]]]], a: str = "va", b: str = "vt"
) -> dict[str, dict[str, list[float]]]:
    """Variant -> target -> the AUROC of each run."""
    table: dict[str, dict[str, list[float]]] = {}
    for trace, labels in runs:
        for name, score in score_variants(a, b).items():
            for target, auroc in detect(score(trace), labels).items():
                if auroc is not None:
                    table.setdefault(name, {}).setdefault(target, []).append(auroc)
    return table


def markdown(table: Mapping[str, Mapping[str, Iterable[float]]]) -> str:
    """The comparison as a Markdown table: mean +- sd (n runs) per target."""
    lines = [
        "| score | caption-misaligned AUROC | audio-misaligned AUROC |",
        "| --- | ---: | ---: |",
    ]
    for name, targets in table.items():
        cells = []
        for target in TARGETS:
            values = np.array(list(targets.get(target, [])), dtype=np.float64)
            if values.size == 0:
                cells.append("n/a")
            else:
                spread = f" +- {values.std(ddof=1):.3f}" if values.size > 1 else ""
                cells.append(f"{values.mean():.3f}{spread} (n={values.size})")
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines)


def breakdown(
    trace: Trace, labels: Mapping[str, Mapping[str, Any]], a: str = "va", b: str = "vt"
) -> str:
    """Per kind of triplet, over the second half of training: how the cosine and norms differ."""
    late = trace.steps >= trace.total_steps // 2
    norm_a = np.sqrt(np.clip(trace.gram(a, a), 0, None))
    norm_b = np.sqrt(np.clip(trace.gram(b, b), 0, None))
    denom = norm_a * norm_b
    cos = np.where(denom > 0, trace.gram(a, b) / np.where(denom > 0, denom, 1.0), 0.0)

    def kind(sample_id: str) -> str:
        record = labels.get(sample_id, {})
        text, audio = bool(record.get(TEXT_FLAG)), bool(record.get(AUDIO_FLAG))
        return (
            "both wrong"
            if text and audio
            else "wrong caption"
            if text
            else ("wrong audio" if audio else "clean")
        )

    kinds = np.array([kind(i) for i in trace.ids])
    lines = [
        f"| triplet | observations | mean cosine | P(cosine < 0) | median {a} grad norm | "
        f"median {b} grad norm |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in ("clean", "wrong caption", "wrong audio", "both wrong"):
        rows = late & (kinds == name)
        if not rows.any():
            continue
        lines.append(
            f"| {name} | {int(rows.sum())} | {cos[rows].mean():+.2f} | "
            f"{np.mean(cos[rows] < 0):.2f} | {np.median(norm_a[rows]):.2e} | "
            f"{np.median(norm_b[rows]):.2e} |"
        )
    return "\n".join(lines)

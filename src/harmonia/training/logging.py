"""Training metrics: one JSON object per logged step in ``RUN/metrics.jsonl`` and TensorBoard.

Scalars go to both; a cosine histogram goes to the JSONL file as 40 counts over equal bins on
[-1, 1] (key ``hist/<a>~<b>``) and to TensorBoard as a histogram of the raw values. Non-finite
numbers are written as JSON null so that the file stays valid JSON.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from harmonia.files import parse_json, write_atomic
from harmonia.training.layout import METRICS_FILE

TENSORBOARD_DIR = "tb"
HIST_BINS = 40


def cosine_histogram(values: torch.Tensor, bins: int = HIST_BINS) -> list[int]:
    """Counts of ``values`` in ``bins`` equal bins over [-1, 1] (values outside are clamped)."""
    flat = values.detach().reshape(-1).double().clamp(-1.0, 1.0)
    flat = flat[torch.isfinite(flat)]
    return [int(c) for c in torch.histc(flat, bins=bins, min=-1.0, max=1.0).tolist()]


class Throughput:
    """Time and samples of the steps since the last log row."""

    def __init__(self) -> None:
        self.busy, self.samples, self.steps = 0.0, 0, 0

    def add(self, seconds: float, samples: int) -> None:
        """One step that took ``seconds`` on ``samples`` samples of this rank."""
        self.busy += seconds
        self.samples += samples
        self.steps += 1

    def take(self, world_size: int, data_wait: float) -> dict[str, float]:
        """Samples per second over all ranks, seconds per step and the fraction of the time
        spent waiting for data (``data_wait`` seconds); then start a new window."""
        busy = max(self.busy, 1e-9)
        row = {
            "throughput": self.samples * world_size / busy,
            "step_time": self.busy / max(self.steps, 1),
            "data_wait": data_wait / busy,
        }
        self.busy, self.samples, self.steps = 0.0, 0, 0
        return row


class MetricAccumulator:
    """Averages scalar metrics and gathers cosine values between two logging steps."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.values: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.seen: dict[str, None] = {}  # keys in first-seen order

    def add(self, metrics: Mapping[str, float]) -> None:
        """Add one step's scalars; non-finite values are left out of the means."""
        for key, value in metrics.items():
            self.seen.setdefault(key, None)
            if math.isfinite(value):
                self.sums[key] += float(value)
                self.counts[key] += 1

    def add_values(self, key: str, values: torch.Tensor) -> None:
        """Add raw values (e.g. per-sample cosines) for the histogram ``key``."""
        self.values[key].append(values.detach().float().reshape(-1).cpu())

    def means(self) -> dict[str, float]:
        """Mean of each scalar since the last reset (NaN when it was never finite)."""
        return {k: self.sums[k] / self.counts[k] if self.counts[k] else math.nan for k in self.seen}

    def histograms(self) -> dict[str, torch.Tensor]:
        """All values of each histogram key since the last reset."""
        return {k: torch.cat(v) for k, v in self.values.items() if v}

    def reset(self) -> None:
        """Start a new logging interval."""
        self.sums.clear()
        self.counts.clear()
        self.seen.clear()
        self.values.clear()


class MetricLogger:
    """Writes metrics to ``RUN/metrics.jsonl`` and ``RUN/tb``; resuming drops rows after ``step``."""

    def __init__(self, run_dir: Path, *, resume_step: int | None = None, tensorboard: bool = True):
        self.path = Path(run_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            truncate_metrics(self.path, resume_step)
        elif self.path.exists():
            self.path.unlink()
        self._file = self.path.open("a", encoding="utf-8")
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self._writer = SummaryWriter(str(Path(run_dir) / TENSORBOARD_DIR), purge_step=purge)

    def log(
        self,
        step: int,
        scalars: Mapping[str, float],
        histograms: Mapping[str, torch.Tensor] | None = None,
    ) -> dict[str, Any]:
        """Write one row for ``step``; returns the row as written to the JSONL file."""
        row: dict[str, Any] = {"step": step, "time": time.time()}
        row.update({k: _finite_or_none(v) for k, v in scalars.items()})
        for key, values in (histograms or {}).items():
            row[key] = cosine_histogram(values)
        self._file.write(json.dumps(row, allow_nan=False) + "\n")
        self._file.flush()
        if self._writer is not None:
            for key, value in scalars.items():
                if math.isfinite(value):
                    self._writer.add_scalar(key, value, step)
            for key, values in (histograms or {}).items():
                finite = values[torch.isfinite(values)]
                if finite.numel():
                    self._writer.add_histogram(key, finite, step, bins="auto")
            self._writer.flush()
        return row

    def close(self) -> None:
        """Flush and close both outputs."""
        self._file.close()
        if self._writer is not None:
            self._writer.close()

    def __enter__(self) -> MetricLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All rows of a metrics.jsonl file; a line that does not parse (the torn last line of a
    killed run, or one nested too deeply) is ignored."""
    rows: list[dict[str, Any]] = []
    if not Path(path).exists():
        return rows
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(parse_json(line))
        except ValueError:
            continue
    return rows


def truncate_metrics(path: Path, step: int) -> None:
    """Keep only rows up to ``step`` (a resumed run rewrites what came after its checkpoint).

    Written beside and renamed over: a kill while rewriting keeps the rows already logged.
    """
    rows = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows)
    write_atomic(path, text)


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None

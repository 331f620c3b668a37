"""The conflict trace: every per-sample observation of a run, for offline study of noisiness scores.

The ledger keeps one EMA per sample; the trace keeps what the EMA was made from, one CSV row per
sample per step: the step, the sample id, each loss's per-sample value and the per-sample Gram of
the losses' gradients (``gram_<a>_<b>``: inner products, so cosines, raw inner products and norms
can all be derived). `harmonia.experiments.conflict_scores` replays it to compare scores (cosine
vs. inner product, EMA decay, warm-up) against ground truth without retraining. A resumed run
appends; steps replayed after a resume appear twice, and readers keep the last row of a
(step, id) pair.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from torch import Tensor


class ConflictTrace:
    """Appends per-sample rows to ``RUN/conflict_trace.csv`` (rank 0 only)."""

    def __init__(self, path: Path, loss_names: Sequence[str]) -> None:
        self.path = path
        self.names = tuple(loss_names)
        pairs = [(j, k) for j in range(len(self.names)) for k in range(j, len(self.names))]
        self.pairs = pairs
        self.columns = ["step", "id"] + [f"loss_{n}" for n in self.names]
        self.columns += [f"gram_{self.names[j]}_{self.names[k]}" for j, k in pairs]
        new = not path.is_file() or path.stat().st_size == 0
        self._file: IO[str] = path.open("a", encoding="utf-8", newline="")
        self._writer = csv.writer(self._file)
        if new:
            self._writer.writerow(self.columns)

    def write(
        self, step: int, ids: Sequence[str], per_sample: Mapping[str, Tensor], gram: Tensor
    ) -> None:
        """One row per sample: ``per_sample[name]`` is ``[B]``, ``gram`` is ``[B, M, M]``."""
        losses = [per_sample[n].detach().double().cpu().tolist() for n in self.names]
        g = gram.detach().double().cpu()
        entries = [g[:, j, k].tolist() for j, k in self.pairs]
        for i, sample_id in enumerate(ids):
            row = [step, sample_id] + [f"{col[i]:.6g}" for col in losses + entries]
            self._writer.writerow(row)

    def close(self) -> None:
        self._file.close()

"""ConflictLedger: a persistent per-sample record of gradient conflict, keyed by sample id.

Each time a sample is seen the Harmonizer's conflict score for it (the smallest pairwise cosine
between its losses' gradients, in [-1, 1]) is folded into an exponential moving average. The
ledger also counts how often the score was a conflict (below ``conflict_threshold``, default 0),
how often the sample was seen and at which step last. Low EMA = suspected misaligned sample:
`ranking` lists them most suspected first, `suspicion` gives an array aligned to any ids for an
AUROC against ground-truth flags, and the `CurriculumSampler` reads the scores to prefer cleaner
samples early in training (Wu et al., NeurIPS 2022, use the conflict as a noisiness measure).

Storage is columnar (numpy arrays plus one id -> row dict) so millions of ids stay cheap; the
state is plain JSON (no pickle), written atomically.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from harmonia.errors import CheckpointError, ConfigError
from harmonia.files import atomic_path, parse_json

STATE_VERSION = 1
CSV_COLUMNS = ("id", "score", "conflicts", "seen", "last_step", "rank")
_COLUMNS = ("score", "conflicts", "seen", "last_step")


class LedgerEntry(NamedTuple):
    """One sample's record; ``rank`` is its 1-based place in `ConflictLedger.ranking`."""

    id: str
    score: float
    conflicts: int
    seen: int
    last_step: int
    rank: int = 0


class ConflictLedger:
    """Per-sample EMA of the conflict score, conflict count, times seen and last step seen.

    ``decay`` is the weight the EMA keeps on its past: ``ema <- decay * ema + (1 - decay) * s``,
    except that a sample's first observation sets ``ema = s``. ``prior`` is the score reported
    for ids never seen. A score below ``conflict_threshold`` counts as a conflict.
    """

    def __init__(
        self, decay: float = 0.9, prior: float = 0.0, conflict_threshold: float = 0.0
    ) -> None:
        if not (0.0 <= decay < 1.0):
            raise ConfigError(f"ledger decay must be in [0, 1), got {decay!r}")
        if not (-1.0 <= prior <= 1.0):
            raise ConfigError(f"ledger prior must be a cosine in [-1, 1], got {prior!r}")
        if not (-1.0 <= conflict_threshold <= 1.0):
            raise ConfigError(
                f"ledger conflict_threshold must be in [-1, 1], got {conflict_threshold!r}"
            )
        self.decay = float(decay)
        self.prior = float(prior)
        self.conflict_threshold = float(conflict_threshold)
        self._index: dict[str, int] = {}
        self._ids: list[str] = []
        self._score = np.zeros(0, dtype=np.float64)
        self._conflicts = np.zeros(0, dtype=np.int64)
        self._seen = np.zeros(0, dtype=np.int64)
        self._last_step = np.zeros(0, dtype=np.int64)

    # ------------------------------------------------------------------ basic access
    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, sample_id: object) -> bool:
        return sample_id in self._index

    def __repr__(self) -> str:
        return f"ConflictLedger({len(self)} ids, decay={self.decay}, prior={self.prior})"

    @property
    def ids(self) -> list[str]:
        """Ids with a record, in the order they were first seen (a copy)."""
        return list(self._ids)

    def entry(self, sample_id: str) -> LedgerEntry:
        """The record of one seen id (KeyError if it was never seen)."""
        row = self._index[sample_id]
        return self._entry(row)

    def __iter__(self) -> Iterator[LedgerEntry]:
        """Records in first-seen order (``rank`` 0: use `ranking` for ranked ones)."""
        return (self._entry(row) for row in range(len(self)))

    def _entry(self, row: int, rank: int = 0) -> LedgerEntry:
        return LedgerEntry(
            self._ids[row],
            float(self._score[row]),
            int(self._conflicts[row]),
            int(self._seen[row]),
            int(self._last_step[row]),
            rank,
        )

    # ------------------------------------------------------------------ recording
    def update(
        self, ids: Sequence[str], scores: Tensor | np.ndarray | Sequence[float], step: int
    ) -> None:
        """Fold one batch of conflict scores in. Non-finite scores are ignored.

        An id repeated within the batch is folded in once per occurrence, in batch order.
        """
        values = _as_array(scores)
        if values.ndim != 1 or values.shape[0] != len(ids):
            raise ValueError(
                f"scores must have shape [{len(ids)}] to match ids, got {tuple(values.shape)}"
            )
        if isinstance(step, bool) or int(step) != step or step < 0:
            raise ValueError(f"step must be a non-negative integer, got {step!r}")
        finite = np.isfinite(values)
        rows = self._rows_for([sample_id for sample_id, ok in zip(ids, finite, strict=True) if ok])
        values = values[finite]
        # np.unique keeps the first occurrence of each row; the rest are folded in later rounds
        while rows.size:
            _, first = np.unique(rows, return_index=True)
            self._fold(rows[first], values[first], int(step))
            rest = np.ones(rows.size, dtype=bool)
            rest[first] = False
            rows, values = rows[rest], values[rest]

    def _fold(self, rows: np.ndarray, values: np.ndarray, step: int) -> None:
        new = self._seen[rows] == 0
        blended = self.decay * self._score[rows] + (1.0 - self.decay) * values
        self._score[rows] = np.where(new, values, blended)
        self._conflicts[rows] += values < self.conflict_threshold
        self._seen[rows] += 1
        self._last_step[rows] = step

    def _rows_for(self, ids: Iterable[str]) -> np.ndarray:
        """Rows of ``ids``, adding (empty) records for new ones."""
        rows = []
        for sample_id in ids:
            row = self._index.get(sample_id)
            if row is None:
                if not isinstance(sample_id, str):
                    raise TypeError(f"sample ids must be strings, got {sample_id!r}")
                row = self._append(sample_id)
            rows.append(row)
        return np.asarray(rows, dtype=np.int64)

    def _append(self, sample_id: str) -> int:
        row = len(self._ids)
        if row == self._score.shape[0]:
            capacity = max(1024, 2 * row)
            for name in _COLUMNS:
                column = getattr(self, f"_{name}")
                grown = np.zeros(capacity, dtype=column.dtype)
                grown[:row] = column
                setattr(self, f"_{name}", grown)
        self._ids.append(sample_id)
        self._index[sample_id] = row
        return row

    # ------------------------------------------------------------------ reading
    def score_of(self, ids: Sequence[str], prior: float | None = None) -> Tensor:
        """EMA scores [len(ids)] (float64) aligned to ``ids``; unseen ids get ``prior``.

        ``prior`` defaults to the ledger's own.
        """
        fill = self.prior if prior is None else float(prior)
        rows = np.fromiter((self._index.get(i, -1) for i in ids), dtype=np.int64, count=len(ids))
        out = np.full(len(ids), fill, dtype=np.float64)
        seen = rows >= 0
        out[seen] = self._score[rows[seen]]
        return torch.from_numpy(out)

    def suspicion(self, ids: Sequence[str], prior: float | None = None) -> np.ndarray:
        """Higher = more suspected misaligned (the negated score), aligned to ``ids``.

        Ready for ``sklearn.metrics.roc_auc_score(is_misaligned, ledger.suspicion(ids))``.
        """
        return -self.score_of(ids, prior).numpy()

    def _ranked_rows(self) -> np.ndarray:
        size = len(self)
        ids = np.asarray(self._ids, dtype=object)
        # most suspected first: lowest score, then most conflicts, then id (deterministic)
        keys = (ids.astype(str), -self._conflicts[:size], self._score[:size])
        return np.lexsort(keys) if size else np.zeros(0, dtype=np.int64)

    def ranking(self, k: int | None = None) -> list[LedgerEntry]:
        """Records ordered most suspected first (lowest EMA score; ties: more conflicts, id)."""
        rows = self._ranked_rows()
        if k is not None:
            if k < 0:
                raise ValueError(f"k must be >= 0, got {k}")
            rows = rows[:k]
        return [self._entry(int(row), rank) for rank, row in enumerate(rows, start=1)]

    # ------------------------------------------------------------------ files
    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write id, score, conflicts, seen, last_step, rank (ranked order), atomically."""

        def write(handle: Any) -> None:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(CSV_COLUMNS)
            for entry in self.ranking():
                score = repr(entry.score)  # shortest text that reads back as the same float
                writer.writerow((entry.id, score, *entry[2:]))

        return _write_text(Path(path), write)

    @classmethod
    def from_csv(cls, path: str | os.PathLike[str], **settings: Any) -> ConflictLedger:
        """Read a ledger written by `to_csv` (settings such as ``decay`` are not in the CSV)."""
        ledger = cls(**settings)
        columns: dict[str, list[Any]] = {name: [] for name in ("ids", *_COLUMNS)}
        try:
            with open(path, newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                missing = set(CSV_COLUMNS) - set(reader.fieldnames or ())
                if missing:
                    raise CheckpointError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
                for line in reader:
                    if None in line.values():
                        raise CheckpointError(
                            f"{path}: line {reader.line_num} has fewer than "
                            f"{len(reader.fieldnames or ())} fields (file cut short?)"
                        )
                    columns["ids"].append(line["id"])
                    columns["score"].append(float(line["score"]))
                    for name in ("conflicts", "seen", "last_step"):
                        columns[name].append(int(line[name]))
        except (OSError, ValueError, csv.Error) as err:
            raise CheckpointError(f"{path}: not a readable ledger CSV: {err}") from None
        ledger._set_columns(columns, source=str(path))
        return ledger

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write `state_dict` as JSON, atomically (temp file then rename)."""
        return _write_text(Path(path), lambda handle: json.dump(self.state_dict(), handle))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ConflictLedger:
        """Read a ledger written by `save` (settings included)."""
        try:
            with open(path, encoding="utf-8") as handle:
                state = parse_json(handle.read())
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{path}: not a readable ledger file: {err}") from None
        return cls.from_state_dict(state, source=str(path))

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable state: settings plus one list per column."""
        rows = np.arange(len(self))
        return {
            "version": STATE_VERSION,
            "decay": self.decay,
            "prior": self.prior,
            "conflict_threshold": self.conflict_threshold,
            "ids": [self._ids[row] for row in rows],
            "score": self._score[rows].tolist(),
            "conflicts": self._conflicts[rows].tolist(),
            "seen": self._seen[rows].tolist(),
            "last_step": self._last_step[rows].tolist(),
        }

    def load_state_dict(self, state: dict[str, Any], *, source: str = "ledger state") -> None:
        """Replace settings and records with those of ``state`` (from `state_dict`)."""
        fresh = type(self).from_state_dict(state, source=source)
        self.__dict__.update(fresh.__dict__)

    @classmethod
    def from_state_dict(
        cls, state: dict[str, Any], *, source: str = "ledger state"
    ) -> ConflictLedger:
        """A new ledger holding ``state`` (from `state_dict`); bad states raise CheckpointError."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            version = state.get("version") if isinstance(state, dict) else type(state).__name__
            raise CheckpointError(
                f"{source}: not a ledger state of version {STATE_VERSION} ({version})"
            )
        try:
            ledger = cls(
                decay=state["decay"],
                prior=state["prior"],
                conflict_threshold=state["conflict_threshold"],
            )
        except (KeyError, TypeError, ConfigError) as err:
            raise CheckpointError(f"{source}: invalid ledger settings: {err}") from None
        ledger._set_columns(state, source=source)
        return ledger

    def _set_columns(self, columns: dict[str, Any], *, source: str) -> None:
        try:
            ids = [str(i) for i in columns["ids"]]
            arrays = {
                "score": np.asarray(columns["score"], dtype=np.float64),
                "conflicts": np.asarray(columns["conflicts"], dtype=np.int64),
                "seen": np.asarray(columns["seen"], dtype=np.int64),
                "last_step": np.asarray(columns["last_step"], dtype=np.int64),
            }
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{source}: invalid ledger columns: {err}") from None
        problem = _column_problem(ids, arrays)
        if problem:
            raise CheckpointError(f"{source}: {problem}")
        self._ids = ids
        self._index = {sample_id: row for row, sample_id in enumerate(ids)}
        for name, array in arrays.items():
            setattr(self, f"_{name}", array.copy())


def _column_problem(ids: list[str], arrays: dict[str, np.ndarray]) -> str | None:
    lengths = {name: array.shape for name, array in arrays.items()}
    if any(shape != (len(ids),) for shape in lengths.values()):
        return f"ledger columns have different lengths: ids {len(ids)}, {lengths}"
    if len(set(ids)) != len(ids):
        return "ledger ids are not unique"
    score, seen = arrays["score"], arrays["seen"]
    if not np.all(np.isfinite(score)) or np.any(np.abs(score) > 1.0 + 1e-6):
        return "ledger scores must be finite cosines in [-1, 1]"
    if np.any(seen < 0) or np.any(arrays["conflicts"] < 0) or np.any(arrays["conflicts"] > seen):
        return "ledger counts must satisfy 0 <= conflicts <= seen"
    return None


def _as_array(scores: Tensor | np.ndarray | Sequence[float]) -> np.ndarray:
    if isinstance(scores, Tensor):
        return scores.detach().to("cpu", torch.float64).numpy()
    return np.asarray(scores, dtype=np.float64)


def _write_text(path: Path, write: Any) -> Path:
    """Write a text file with ``write(stream)`` through `atomic_path` (temp file, then rename)."""
    with atomic_path(path) as temp, open(temp, "w", newline="", encoding="utf-8") as stream:
        write(stream)
    return path

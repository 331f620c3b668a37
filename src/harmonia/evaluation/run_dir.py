"""Read what a training run left behind (see the run-directory contract in the docs).

Only reading happens here: metrics.jsonl records, the ledger CSV (via ConflictLedger), the
resolved config and the location of the final model. Missing pieces raise one-line `HarmoniaError`s naming the path.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harmonia.errors import CheckpointError, HarmoniaError, first_line
from harmonia.harmonization.ledger import ConflictLedger, LedgerEntry
from harmonia.losses.temperature import DEFAULT_TEMPERATURE
from harmonia.training.layout import CONFIG_FILE, EVAL_FILE, LEDGER_CSV, METRICS_FILE, MODEL_DIR
from harmonia.training.logging import read_metrics
from harmonia.typed_config import parse_yaml


class RunDir:
    """A training run's output directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise HarmoniaError(f"run directory not found: {self.path}")

    @property
    def model_dir(self) -> Path:
        return self.path / MODEL_DIR

    @property
    def ledger_path(self) -> Path:
        return self.path / LEDGER_CSV

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def eval_path(self) -> Path:
        return self.path / EVAL_FILE

    def require_model(self) -> Path:
        """The final model directory, or a CheckpointError saying where it was expected."""
        if not (self.model_dir / "config.json").is_file():
            raise CheckpointError(
                f"no trained model in {self.model_dir} (expected config.json there)"
            )
        return self.model_dir

    def config(self) -> dict[str, Any]:
        """The resolved training config (RUN/config.yaml) as plain data; {} when absent.

        Read with the config loader without YAML aliases (the trainer writes none), so a
        hostile file can neither expand without bound nor nest deeper than the parser goes.
        """
        path = self.path / CONFIG_FILE
        if not path.is_file():
            return {}
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise HarmoniaError(f"{path}: unreadable ({first_line(err)})") from None
        data = parse_yaml(text, source=str(path), aliases=False)
        return data if isinstance(data, dict) else {}

    def temperature(self) -> float:
        """The run's ``losses.temperature`` (the library default when not recorded)."""
        losses = self.config().get("losses")
        value = losses.get("temperature") if isinstance(losses, Mapping) else None
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return float(value)
        return DEFAULT_TEMPERATURE

    def dataset_dir(self) -> Path | None:
        """The dataset the run trained on: `data.dir` of its config (None when not recorded).

        A relative path is taken from the working directory, like the trainer does.
        """
        data = self.config().get("data")
        value = data.get("dir") if isinstance(data, Mapping) else None
        return Path(value) if isinstance(value, str) and value else None

    def require_dataset(self, override: str | Path | None = None) -> Path:
        """`override` or the recorded dataset; a one-line HarmoniaError when there is none."""
        if override is not None:
            dataset = Path(override)
            if not dataset.is_dir():
                raise HarmoniaError(f"dataset directory not found: {dataset}")
            return dataset
        recorded = self.dataset_dir()
        config = self.path / CONFIG_FILE
        if recorded is None:
            raise HarmoniaError(f"{config} records no dataset (data.dir): pass --data DATASET_DIR")
        if not recorded.is_dir():
            raise HarmoniaError(
                f"dataset directory not found: {recorded} (data.dir in {config}); "
                "pass --data DATASET_DIR"
            )
        return recorded

    def metrics(self) -> list[dict[str, Any]]:
        """Every record of RUN/metrics.jsonl that has a step (empty when the file is absent)."""
        return [r for r in read_metrics(self.metrics_path) if isinstance(r, dict) and "step" in r]

    def ledger(self) -> list[LedgerEntry]:
        """RUN/ledger.csv entries (empty when absent), most suspect (lowest score) first."""
        if not self.ledger_path.is_file():
            return []
        return ConflictLedger.from_csv(self.ledger_path).ranking()

"""The run directory's file names: one place for the trainer that writes them and every reader.

A run directory (`harmonia train --out RUN`) holds the resolved config, the metric log, the
summary, the conflict ledger (and optionally the per-sample trace), checkpoints and the final
model. Nothing here imports torch, so the CLI and the study planner can name these files cheaply.
"""

CONFIG_FILE = "config.yaml"
"""The resolved training config."""
SUMMARY_FILE = "summary.json"
"""Status, steps, time, skipped samples and learning health, written at the end."""
METRICS_FILE = "metrics.jsonl"
"""One JSON row per logged step."""
LEDGER_CSV = "ledger.csv"
"""Every training sample's noisiness score, most suspected first."""
TRACE_CSV = "conflict_trace.csv"
"""Every per-sample observation, with ``harmonize.ledger.trace: true``."""
MODEL_DIR = "model"
"""The final model (safetensors weights, config.json, vocab.json)."""
CHECKPOINTS_DIR = "checkpoints"
"""Checkpoints, one ``step-NNNNNNNN`` directory each (see training/checkpoint.py)."""
EVAL_FILE = "eval.json"
"""`harmonia eval --json` results next to the run."""
LOCK_FILE = ".lock"
"""Held by the process training into the run directory (see training/lock.py)."""

"""Downstream evaluation of a trained model and noise-detection scoring of a run's ledger.

Pure metrics (retrieval, zero-shot, linear probe, noise detection) take arrays and know nothing of
models or datasets; `evaluate` runs the whole protocol on a built dataset split.
"""

from __future__ import annotations

from harmonia.evaluation.evaluate import evaluate
from harmonia.evaluation.linear_probe import ProbeResult, linear_probe
from harmonia.evaluation.noise_detection import DetectionResult, detection_metrics, error_norm
from harmonia.evaluation.retrieval import (
    RetrievalResult,
    class_relevance,
    instance_relevance,
    retrieval_metrics,
)
from harmonia.evaluation.table import format_table
from harmonia.evaluation.zero_shot import ZeroShotResult, class_embeddings, zero_shot_accuracy

__all__ = [
    "DetectionResult",
    "ProbeResult",
    "RetrievalResult",
    "ZeroShotResult",
    "class_embeddings",
    "class_relevance",
    "detection_metrics",
    "error_norm",
    "evaluate",
    "format_table",
    "instance_relevance",
    "linear_probe",
    "retrieval_metrics",
    "zero_shot_accuracy",
]

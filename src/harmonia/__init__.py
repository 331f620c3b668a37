"""harmonia: multimodal contrastive pre-training with cross-modality gradient harmonization.

The names a training loop imports are available from the top level (``from harmonia import
Harmonizer, PCGrad``); they load on first use, so ``import harmonia`` (and the CLI) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "Harmonizer": "harmonia.harmonization",
    "ConflictLedger": "harmonia.harmonization",
    "Method": "harmonia.harmonization.methods",
    "NoSurgery": "harmonia.harmonization.methods",
    "PCGrad": "harmonia.harmonization.methods",
    "GradVac": "harmonia.harmonization.methods",
    "UPGrad": "harmonia.harmonization.methods",
    "MGDA": "harmonia.harmonization.methods",
    "VATT": "harmonia.models",
    "ModelConfig": "harmonia.models",
    "ContrastiveObjective": "harmonia.losses",
    "keep_freed_memory": "harmonia.allocator",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'harmonia' has no attribute {name!r}")

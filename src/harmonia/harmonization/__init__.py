"""Cross-modality gradient harmonization: measure and realign, per sample, the gradients of
several losses that share an anchor representation.

Entry point: `Harmonizer` (`harmonia.harmonization.harmonizer`). Methods live one per file in
`harmonia.harmonization.methods`; the contract a curriculum implements is
`harmonia.harmonization.protocols.CurriculumLike` (implemented by
`harmonia.harmonization.curriculum`; `ledger` and `sampler` keep the per-sample record and the
clean-first sampling built on the Harmonizer's scores). This package never imports
harmonia.models.
"""

from __future__ import annotations

from harmonia.harmonization.curriculum import Curriculum, build_curriculum
from harmonia.harmonization.harmonizer import Harmonizer
from harmonia.harmonization.ledger import ConflictLedger
from harmonia.harmonization.methods import METHODS, Method
from harmonia.harmonization.protocols import CurriculumLike
from harmonia.harmonization.sampler import CurriculumSampler
from harmonia.harmonization.spaces import SPACES
from harmonia.harmonization.stats import HarmonizerStats

__all__ = [
    "METHODS",
    "SPACES",
    "ConflictLedger",
    "Curriculum",
    "CurriculumLike",
    "CurriculumSampler",
    "Harmonizer",
    "HarmonizerStats",
    "Method",
    "build_curriculum",
]

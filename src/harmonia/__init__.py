"""harmonia: multimodal contrastive pre-training with cross-modality gradient harmonization."""

from __future__ import annotations

__version__ = "0.1.0"

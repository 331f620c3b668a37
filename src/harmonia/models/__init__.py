"""VATT models: raw-signal tokenizers, DropToken, a transformer backbone, common-space heads.

cfg = ModelConfig.named("tiny")
tokenizer = WordTokenizer.build(training_captions)
model = VATT(cfg, tokenizer)
out = model(batch)          # VATTOutput: anchor, features, embeddings, valid
"""

from harmonia.models.config import (
    BackboneConfig,
    HeadConfig,
    LogMelConfig,
    ModalityConfig,
    ModelConfig,
    SpaceConfig,
)
from harmonia.models.droptoken import DropToken
from harmonia.models.vatt import VATT, ModalityEncoder, VATTOutput
from harmonia.models.vocab import WordTokenizer

__all__ = [
    "VATT",
    "BackboneConfig",
    "DropToken",
    "HeadConfig",
    "LogMelConfig",
    "ModalityConfig",
    "ModalityEncoder",
    "ModelConfig",
    "SpaceConfig",
    "VATTOutput",
    "WordTokenizer",
]

"""Contrastive losses: symmetric NCE, MIL-NCE, distributed gathering, the VATT objective.

objective = ContrastiveObjective(default_specs(model.config))  # va: nce(video, audio); vt: milnce(video, text)
per_sample = objective(model(batch))        # {"va": Tensor[B], "vt": Tensor[B]}
"""

from harmonia.losses.contrastive import milnce, nce
from harmonia.losses.gather import Gather, Gathered, gather_with_grad, local_gather
from harmonia.losses.objective import (
    ContrastiveObjective,
    ContrastiveOutput,
    LossSpec,
    default_specs,
)
from harmonia.losses.temperature import DEFAULT_TEMPERATURE, LearnableTemperature

__all__ = [
    "DEFAULT_TEMPERATURE",
    "ContrastiveObjective",
    "ContrastiveOutput",
    "Gather",
    "Gathered",
    "LearnableTemperature",
    "LossSpec",
    "default_specs",
    "gather_with_grad",
    "local_gather",
    "milnce",
    "nce",
]

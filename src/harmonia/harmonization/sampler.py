"""CurriculumSampler: a dataset-index sampler that serves cleaner samples first early in training.

Each epoch is a weighted random permutation of the dataset (weighted sampling without
replacement): sample i gets weight ``exp(beta * s_i)`` where ``s_i`` is its `ConflictLedger`
score (EMA of the conflict cosine; unseen samples get a neutral prior) and ``beta`` the
sharpness, which decays from ``sharpness`` to 0 over the first ``warmup`` fraction of training
(the same schedule shapes as the online curricula). Samples
whose gradients agree therefore tend to come early in an epoch (and, with ``num_samples`` below
the dataset size, to be the ones drawn at all); once beta is 0 the epoch is a uniform random
permutation. This complements the online curriculum (Wu et al., NeurIPS 2022): the curriculum
down-weights conflicting samples inside a batch, the sampler decides which samples reach a batch.

The sampler yields indices only, so it runs in the main process and works with any number of
DataLoader workers. The ledger is read once, when an epoch's first iterator is created: the
trainer updates the ledger in the main process from the whole global batch (every rank folds in
the same gathered scores), so every rank holds the same ledger, draws the same global
permutation and takes a disjoint share of it (like DistributedSampler).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from harmonia.errors import CheckpointError, ConfigError
from harmonia.harmonization.curriculum import SHAPES, check_progress, relaxation
from harmonia.harmonization.ledger import ConflictLedger


class CurriculumSampler(Sampler[int]):
    """Samples dataset indices, preferring low-conflict samples early; resumable mid-epoch.

    ``ids[i]`` is the sample id of dataset index i. Per rank an epoch yields ``len(self)``
    indices: the global permutation (truncated to ``num_samples`` if given, padded by repeating
    its start when it does not divide evenly and ``drop_last`` is False) split round-robin.
    ``prior`` is the score assumed for ids the ledger has not seen (default: the median score of
    the seen ones, i.e. neither preferred nor avoided).
    """

    def __init__(
        self,
        ids: Sequence[str],
        ledger: ConflictLedger,
        *,
        sharpness: float = 4.0,
        warmup: float = 0.5,
        shape: str = "linear",
        epochs: int = 1,
        prior: float | None = None,
        num_samples: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        self.ids = list(ids)
        self.ledger = ledger
        _check(len(self.ids) > 0, "ids", "must not be empty", len(self.ids))
        _check(len(set(self.ids)) == len(self.ids), "ids", "must be unique", "duplicates")
        _check(sharpness >= 0.0, "sharpness", "must be >= 0", sharpness)
        _check(0.0 <= warmup <= 1.0, "warmup", "must be a fraction in [0, 1]", warmup)
        _check(epochs >= 1, "epochs", "must be >= 1", epochs)
        _check(shape in SHAPES, "shape", f"must be one of {', '.join(SHAPES)}", shape)
        _check(prior is None or -1.0 <= prior <= 1.0, "prior", "must be in [-1, 1]", prior)
        _check(world_size >= 1, "world_size", "must be >= 1", world_size)
        _check(0 <= rank < world_size, "rank", f"must be in [0, {world_size})", rank)
        total = len(self.ids) if num_samples is None else num_samples
        _check(0 < total <= len(self.ids), "num_samples", "must be in [1, len(ids)]", num_samples)
        _check(
            total >= world_size or not drop_last, "num_samples", "leaves no sample per rank", total
        )
        self.sharpness = float(sharpness)
        self.warmup = float(warmup)
        self.shape = shape
        self.epochs = int(epochs)
        self.prior = prior
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.total = total
        per_rank = total // world_size if drop_last else -(-total // world_size)
        self.num_samples = per_rank
        self.epoch = 0
        self._progress: float | None = None
        self._order: np.ndarray | None = None
        self._position = 0
        self._resumed = False

    def __len__(self) -> int:
        return self.num_samples

    # ------------------------------------------------------------------ epochs
    def set_epoch(self, epoch: int, progress: float | None = None) -> None:
        """Start epoch ``epoch``; its order is drawn when its first iterator is created.

        ``progress`` (fraction of training done when the epoch starts) overrides the default
        ``min(epoch / epochs, 1)``, e.g. for trainers that count steps. Setting the epoch the
        sampler is already in keeps its order and position, so a resumed run can call
        ``set_epoch`` as usual; the progress of an epoch whose order is drawn stays fixed.
        """
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if progress is not None:
            check_progress(progress)
        if epoch != self.epoch:
            self.epoch = epoch
            self._order = None
            self._position = 0
        if self._order is None:
            self._progress = progress

    def progress(self) -> float:
        """The fraction of training done this epoch's order is drawn at."""
        if self._progress is not None:
            return self._progress
        return min(self.epoch / self.epochs, 1.0)

    def beta(self) -> float:
        """The sharpness used this epoch: ``sharpness`` at progress 0, 0 after the warm-up."""
        return self.sharpness * (1.0 - relaxation(self.progress(), self.warmup, self.shape))

    def sampling_weights(self) -> torch.Tensor:
        """Relative sampling weights [len(ids)] this epoch (before normalization), from the ledger."""
        return torch.exp(self.beta() * self._scores())

    def _scores(self) -> torch.Tensor:
        scores = self.ledger.score_of(self.ids, prior=float("nan"))
        known = ~scores.isnan()
        prior = self.prior
        if prior is None:
            prior = float(scores[known].median()) if bool(known.any()) else self.ledger.prior
        return torch.where(known, scores, torch.full_like(scores, prior))

    def _plan(self) -> np.ndarray:
        """This rank's indices for the epoch: a share of one weighted global permutation."""
        rng = np.random.default_rng([self.seed, self.epoch])
        # Efraimidis-Spirakis: sorting E_i / w_i (E_i ~ Exp(1)) is weighted sampling without
        # replacement; in logs: log E_i - beta * s_i. beta = 0 gives a uniform permutation.
        keys = np.log(rng.exponential(size=len(self.ids))) - self.beta() * self._scores().numpy()
        order = np.argsort(keys, kind="stable")[: self.total]
        size = self.num_samples * self.world_size
        if size > order.size:
            order = np.resize(order, size)  # repeats from the start, like DistributedSampler
        return order[self.rank : size : self.world_size].astype(np.int64)

    def __iter__(self) -> Iterator[int]:
        resumed, self._resumed = self._resumed, False
        if self._order is None:
            self._order = self._plan()
            self._position = 0
        elif self._position >= self._order.size and not resumed:
            self._position = 0  # a finished epoch iterated again replays it; a resumed one is done
        while self._position < self._order.size:
            index = int(self._order[self._position])
            self._position += 1
            yield index

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, consumed: int | None = None) -> dict[str, Any]:
        """Where the sampler is: epoch, this epoch's order and the position in it.

        The order is stored (not re-drawn on resume) because the ledger moves during the epoch.
        ``consumed`` is how many of this epoch's indices the trainer has used; it defaults to
        how many the sampler has yielded, which runs ahead of the trainer when DataLoader
        workers prefetch, so pass ``batches_done * batch_size`` in that case. Tensors and plain
        values only: fits a ``torch.save`` file loaded with ``weights_only=True``.
        """
        position = self._position if consumed is None else consumed
        size = 0 if self._order is None else self._order.size
        if not 0 <= position <= size:
            raise ValueError(f"consumed must be in [0, {size}] for this epoch, got {consumed}")
        order = torch.zeros(0, dtype=torch.int64) if self._order is None else self._order
        return {
            "epoch": self.epoch,
            "progress": self._progress,
            "position": position,
            "order": torch.as_tensor(order, dtype=torch.int64).clone(),
            "planned": self._order is not None,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "dataset_size": len(self.ids),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume where `state_dict` was taken: the next iterator continues that epoch."""
        layout = (self.seed, self.rank, self.world_size, len(self.ids))
        saved = tuple(state.get(key) for key in ("seed", "rank", "world_size", "dataset_size"))
        if saved != layout:
            raise CheckpointError(
                "sampler state is for (seed, rank, world_size, dataset size) "
                f"{saved}, this sampler has {layout}"
            )
        order = torch.as_tensor(state["order"], dtype=torch.int64).numpy().copy()
        position = int(state["position"])
        planned = bool(state["planned"])
        if planned and (order.size != self.num_samples or not 0 <= position <= order.size):
            raise CheckpointError("sampler state does not match this sampler's epoch length")
        if order.size and (order.min() < 0 or order.max() >= len(self.ids)):
            raise CheckpointError("sampler state holds indices outside the dataset")
        self.epoch = int(state["epoch"])
        self._progress = state["progress"]
        self._order = order if planned else None
        self._position = position if planned else 0
        self._resumed = True


def _check(ok: bool, field: str, message: str, value: object) -> None:
    if not ok:
        raise ConfigError(f"CurriculumSampler: {field} {message}, got {value!r}")

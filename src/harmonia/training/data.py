"""What the trainer needs from a dataset: it existing, its splits, its captions, its clip shape.

The dataset is built on first use from ``data.build`` when ``data.dir`` holds none (a dataset
named explicitly with ``--data`` must exist). Validation reads a fixed subset of the validation
split in a fixed order, so evaluations at different steps and runs are comparable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from harmonia.data import ShardDataset, build_dataset, collate, load_media_spec, read_index
from harmonia.data.filtering import FilterRule, ranked_suspects
from harmonia.data.index import SUMMARY_FILE, load_summary
from harmonia.data.shards import TruncatedMember, open_shard, read_member
from harmonia.data.sources import resolve_source
from harmonia.errors import CheckpointError, ConfigError, DataError
from harmonia.files import parse_json
from harmonia.harmonization.ledger import ConflictLedger
from harmonia.models import ModelConfig
from harmonia.training.config import DataConfig, EvalConfig, SuspectsConfig
from harmonia.training.signals import worker_signal_handlers


def ensure_dataset(
    cfg: DataConfig, override: str | Path | None = None, progress: bool = True
) -> Path:
    """The dataset directory: ``override`` (must exist) or ``cfg.dir`` (built if absent)."""
    if override is not None:
        root = Path(override)
        if not (root / SUMMARY_FILE).is_file():
            raise DataError(
                f"no dataset at {root} (expected {SUMMARY_FILE}; see harmonia data build)"
            )
        return root
    root = Path(cfg.dir)
    if (root / SUMMARY_FILE).is_file():
        return root
    if root.exists() and any(root.iterdir()):
        raise DataError(f"data.dir {root} exists but holds no dataset (no {SUMMARY_FILE})")
    print(f"no dataset in {root}: building it (data.build options)", flush=True)
    source = resolve_source(cfg.source, allow_builtin=True)
    build_dataset(cfg.build, source, root, overwrite=root.exists(), progress=progress)
    return root


def open_split(
    root: Path, split: str, *, cache: bool = False, exclude: Iterable[str] = ()
) -> ShardDataset:
    """The map-style dataset of one split (DataError naming the splits that exist)."""
    split_size(root, split)
    return ShardDataset(root, split, cache=cache, exclude=set(exclude))


def split_size(root: Path, split: str) -> int:
    """Samples of ``split`` as the summary counts them (DataError naming the splits that exist)."""
    splits = load_summary(root).get("splits", {})
    if split not in splits:
        raise DataError(f"{root} has no split {split!r}; it has {', '.join(splits)}")
    return int(splits[split]["samples"])


def suspects_to_drop(options: SuspectsConfig, root: Path, split: str) -> list[str]:
    """The ids of ``split`` to leave out: the ledger's most suspected ``fraction``, ranked first.

    Samples the ledger never saw are not suspects. The count is ``round(fraction * size)`` of
    the split; a ledger that names none of the split's ids is an error (wrong dataset).
    """
    if options.fraction == 0.0:
        return []
    if not options.ledger:
        raise ConfigError(
            f"data.drop_suspects.ledger: dropping {options.fraction:g} of the training split "
            "needs the ledger.csv of a run on the same data (data.drop_suspects.ledger=RUN/ledger.csv)"
        )
    ids = {r["id"] for r in read_index(root, split)}
    try:
        ledger = ConflictLedger.from_csv(options.ledger)
    except CheckpointError as err:
        raise ConfigError(f"data.drop_suspects.ledger: {err}") from None
    ranked = ranked_suspects(ledger, ids)
    if not ranked:
        raise ConfigError(
            f"data.drop_suspects.ledger: {options.ledger} names none of the {len(ids)} samples "
            f"of split {split!r} in {root}"
        )
    chosen, _ = FilterRule(fraction=options.fraction).choose(ranked, len(ids))
    return [entry.id for entry in chosen]


def collate_for(dataset: ShardDataset) -> Callable[[list[Any]], dict[str, Any]]:
    """The batch collate of a dataset (empty batches keep the clip shape)."""
    return partial(collate, spec=dataset.spec)


def split_captions(root: Path, split: str) -> list[str]:
    """Every caption of a split, read from the shards' small json members (no video decoding).

    Unreadable members are left out: the loader reports those samples when it meets them.
    """
    captions: list[str] = []
    handles: dict[str, Any] = {}
    try:
        for record in read_index(root, split):
            member = record.get("members", {}).get("json")
            if member is None:
                continue
            shard = record["shard"]
            try:
                if shard not in handles:
                    handles[shard] = open_shard(root, shard)
                meta = parse_json(read_member(handles[shard], member["offset"], member["size"]))
            except (TruncatedMember, ValueError, OSError):
                continue
            texts = meta.get("captions") if isinstance(meta, dict) else None
            if isinstance(texts, list):
                captions.extend(t for t in texts if isinstance(t, str))
    finally:
        for handle in handles.values():
            handle.close()
    return captions


def check_model_inputs(root: Path, model: ModelConfig) -> None:
    """The model's video/audio input shapes must be the dataset's clip shape."""
    spec = load_media_spec(root)
    expected = {
        "video": [spec.frames, spec.height, spec.width, 3],
        "audio": [spec.audio_samples],
    }
    for name, modality in model.modalities.items():
        want = expected.get(modality.kind)
        if want is not None and list(modality.shape) != want:
            raise ConfigError(
                f"model.modalities.{name}.shape: is {list(modality.shape)} but the clips in {root} "
                f"are {want}; set it to {want} (and a patch that divides it)"
            )


def validation_batches(
    root: Path,
    split: str,
    cfg: EvalConfig,
    num_workers: int = 0,
    on_skipped: Callable[[list[dict[str, str]]], None] | None = None,
) -> Callable[[], Iterable[dict[str, Any]]] | None:
    """A fresh iterable over a fixed validation subset per call, or None without that split.

    Corrupt samples are left out of the batches and handed to ``on_skipped``.
    """
    if split not in load_summary(root).get("splits", {}):
        return None
    dataset = ShardDataset(root, split)
    size = len(dataset)
    count = size if cfg.max_samples is None else min(size, cfg.max_samples)
    chosen = torch.randperm(size, generator=torch.Generator().manual_seed(0))[:count]
    subset = Subset(dataset, sorted(chosen.tolist()))

    def batches() -> Iterator[dict[str, Any]]:
        loader = DataLoader(
            subset,
            batch_size=cfg.batch_size,
            collate_fn=collate_for(dataset),
            num_workers=num_workers,
            worker_init_fn=worker_signal_handlers if num_workers else None,
            generator=torch.Generator().manual_seed(0),
        )
        for batch in loader:
            if batch["skipped"] and on_skipped is not None:
                on_skipped(batch["skipped"])
            if len(batch["id"]) > 1:
                yield batch

    return batches

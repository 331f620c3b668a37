"""`evaluate(model, dataset_dir, split)`: the whole downstream protocol as one JSON-ready dict.

On the evaluation split (its misaligned samples, if any, are left out and counted):
- zero-shot digit and motion classification of videos against averaged caption prompts;
- retrieval text->video, audio->video and video->audio at instance level (the sample's own
  caption / audio / clip is the only hit) and class level (any clip of the same class is a hit:
  digit and motion for captions, digit for audio, which does not carry the motion);
- linear probes on frozen pooled features, fitted on the training split, scored on this split.
On the training split, when a ledger is given: how well its conflict scores find the samples the
index flags as misaligned, next to two baselines computed from the final model (pair cosine and
an EL2N-style error norm of each matched pair within random blocks of about 32).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from harmonia.errors import DataError
from harmonia.evaluation.features import SplitFeatures, encode_split
from harmonia.evaluation.labels import AUDIO_FLAG, NOISE_FLAGS, TEXT_FLAG, noise_flag
from harmonia.evaluation.linear_probe import linear_probe
from harmonia.evaluation.noise_detection import detection_metrics, error_norm
from harmonia.evaluation.prompts import digit_prompts, motion_prompts
from harmonia.evaluation.retrieval import class_relevance, instance_relevance, retrieval_metrics
from harmonia.evaluation.roles import Roles
from harmonia.evaluation.zero_shot import embed_prompts, zero_shot_accuracy
from harmonia.harmonization.ledger import LedgerEntry
from harmonia.losses.contrastive import milnce, nce
from harmonia.losses.temperature import DEFAULT_TEMPERATURE

SCHEMA = "harmonia.eval/1"
BatchSource = Callable[[str], Iterable[Mapping[str, Any]]]
"""split name -> collated batches of that split (in a fixed order)."""
Labels = Mapping[str, Mapping[str, Any]]
EL2N_BLOCK = 32
EL2N_TEMPERATURE = DEFAULT_TEMPERATURE
HELD_OUT_BLOCK = 32
"""Clips per block for the held-out losses (the demo's training batch: the same chance)."""


def evaluate(
    model: nn.Module,
    dataset_dir: str | Path,
    split: str = "test",
    *,
    train_split: str = "train",
    ledger: Sequence[LedgerEntry] | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    max_eval: int | None = None,
    max_train: int | None = None,
    batches: BatchSource | None = None,
    progress: bool = False,
    temperature: float = DEFAULT_TEMPERATURE,
) -> dict[str, Any]:
    """Evaluate a frozen model on `split` of a built dataset; see the module docstring.

    ``temperature`` is the losses' (the run's ``losses.temperature``) for the held-out losses.
    """
    from harmonia.data.index import load_labels

    start = time.perf_counter()
    labels = load_labels(dataset_dir)
    splits = sorted({str(r.get("split")) for r in labels.values()})
    if split not in splits:
        raise DataError(f"{dataset_dir} has no split {split!r} (it has {', '.join(splits)})")
    roles = Roles.from_model_config(model.config)
    source = batches or _loader_batches(Path(dataset_dir), batch_size, num_workers)
    notes: list[str] = []

    encoded = encode_split(
        model, source(split), roles, max_samples=max_eval, desc=split, progress=progress
    )
    clean = [i for i, sid in enumerate(encoded.ids) if noise_flag(labels[sid]) is not True]
    excluded = len(encoded) - len(clean)
    feats = encoded.subset(clean)
    if excluded:
        notes.append(f"{excluded} misaligned samples of '{split}' left out (index flags)")

    train: SplitFeatures | None = None
    if train_split in splits and train_split != split:
        train = encode_split(
            model,
            source(train_split),
            roles,
            max_samples=max_train,
            desc=train_split,
            progress=progress,
        )
    else:
        notes.append(f"no '{train_split}' split to fit linear probes on: probes skipped")

    result: dict[str, Any] = {
        "schema": SCHEMA,
        "dataset": str(dataset_dir),
        "split": split,
        "train_split": train_split if train is not None else None,
        "n_samples": len(feats),
        "n_excluded": excluded,
        "n_train": len(train) if train is not None else 0,
        "roles": dict(roles.__dict__),
        "zero_shot": _zero_shot(model, feats, labels, roles),
        "retrieval": _retrieval(feats, labels),
        "losses": _held_out_losses(feats, roles, temperature),
        "linear_probe": _probes(train, feats, labels, roles) if train is not None else {},
        "noise_detection": _noise_detection(ledger, train, labels, notes),
        "skipped": [*encoded.skipped, *(train.skipped if train is not None else [])],
        "notes": notes,
    }
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result


def _loader_batches(dataset_dir: Path, batch_size: int, num_workers: int) -> BatchSource:
    from harmonia.data import ShardDataset, make_loader

    def source(split: str) -> Iterable[Mapping[str, Any]]:
        dataset = ShardDataset(dataset_dir, split)
        return make_loader(dataset, batch_size, shuffle=False, num_workers=num_workers)

    return source


def _label(record: Mapping[str, Any], preferred: str, fallback: str) -> Any:
    """A modality's own content label when the index records it, else the clip's label."""
    value = record.get(preferred)
    return record[fallback] if value is None else value


def _zero_shot(model: Any, feats: SplitFeatures, labels: Labels, roles: Roles) -> dict[str, Any]:
    def encode_text(prompts: list[str]) -> Tensor:
        return model.encode(roles.text, prompts, space=roles.text_space).float().cpu()

    out: dict[str, Any] = {}
    for task, prompts in (("digit", digit_prompts()), ("motion", motion_prompts())):
        classes, class_emb = embed_prompts(encode_text, prompts)
        targets = [labels[i][task] for i in feats.ids]
        res = zero_shot_accuracy(feats.video_text, class_emb, classes, targets).to_dict()
        res["prompts_per_class"] = len(next(iter(prompts.values())))
        out[task] = res
    return out


def _retrieval(feats: SplitFeatures, labels: Labels) -> dict[str, dict[str, Any]]:
    recs = [labels[i] for i in feats.ids]
    video_class = [(r["digit"], r["motion"]) for r in recs]
    video_digit = [r["digit"] for r in recs]
    audio_digit = [_label(r, "audio_digit", "digit") for r in recs]

    # text -> video: every distinct caption of a clip is a query
    rows, query_ids, query_class = [], [], []
    for i, (caps, valid) in enumerate(zip(feats.captions, feats.text_valid, strict=True)):
        seen: set[str] = set()
        for k, text in enumerate(caps):
            if k < len(valid) and bool(valid[k]) and text not in seen:
                seen.add(text)
                rows.append(feats.text[i, k])
                query_ids.append(feats.ids[i])
                r = recs[i]
                query_class.append(
                    (_label(r, "caption_digit", "digit"), _label(r, "caption_motion", "motion"))
                )
    out: dict[str, dict[str, Any]] = {}
    if rows:
        sim = (torch.stack(rows) @ feats.video_text.T).double().numpy()
        out["text->video"] = {
            "instance": retrieval_metrics(
                sim, instance_relevance(query_ids, feats.ids), relevance="instance"
            ).to_dict(),
            "class": retrieval_metrics(
                sim, class_relevance(query_class, video_class), relevance="class:digit+motion"
            ).to_dict(),
        }
    sim_av = (feats.audio @ feats.video_audio.T).double().numpy()
    for direction, sim, q_cls, g_cls in (
        ("audio->video", sim_av, audio_digit, video_digit),
        ("video->audio", sim_av.T, video_digit, audio_digit),
    ):
        out[direction] = {
            "instance": retrieval_metrics(
                sim, instance_relevance(feats.ids, feats.ids), relevance="instance"
            ).to_dict(),
            "class": retrieval_metrics(
                sim, class_relevance(q_cls, g_cls), relevance="class:digit"
            ).to_dict(),
        }
    return out


def _probes(
    train: SplitFeatures, feats: SplitFeatures, labels: Labels, roles: Roles
) -> dict[str, Any]:
    def targets(ids: Sequence[str], key: str, fallback: str) -> list[Hashable]:
        return [_label(labels[i], key, fallback) for i in ids]

    out: dict[str, Any] = {}
    for modality, task, key in (
        (roles.video, "digit", "digit"),
        (roles.video, "motion", "motion"),
        (roles.audio, "digit", "audio_digit"),
    ):
        res = linear_probe(
            train.pooled[modality],
            targets(train.ids, key, task),
            feats.pooled[modality],
            targets(feats.ids, key, task),
        )
        out[f"{modality}/{task}"] = res.to_dict()
    return out


def _noise_detection(
    ledger: Sequence[LedgerEntry] | None,
    train: SplitFeatures | None,
    labels: Labels,
    notes: list[str],
) -> dict[str, Any]:
    """Each available score against the flags it can see.

    The ledger's conflict score is scored against any misalignment and against caption-only and
    audio-only flags; the final-model baselines of a pair (video-audio, video-text) only against
    the flag of that pair's partner.
    """
    text_flag: tuple[str, ...] = (TEXT_FLAG,)
    audio_flag: tuple[str, ...] = (AUDIO_FLAG,)
    # name -> (ids, values, higher_is_noisier, {target: flags scored against})
    scores: dict[str, tuple[list[str], np.ndarray, bool, dict[str, tuple[str, ...]]]] = {}
    if ledger:
        known = [r for r in ledger if r.id in labels and noise_flag(labels[r.id]) is not None]
        if known:
            targets = {"any": NOISE_FLAGS, "text": text_flag, "audio": audio_flag}
            values = np.array([r.score for r in known])
            scores["ledger"] = ([r.id for r in known], values, False, targets)
        else:
            notes.append("ledger ids not found in this dataset's index: no ledger noise detection")
    if train is not None and any(noise_flag(labels[i]) for i in train.ids):
        text_mean = _mean_caption(train.text, train.text_valid)
        pair_va = (train.video_audio * train.audio).sum(-1).double().numpy()
        pair_vt = (train.video_text * text_mean).sum(-1).double().numpy()
        on_audio = {"audio": audio_flag}
        on_text = {"text": text_flag}
        scores["pair_cos/audio"] = (train.ids, pair_va, False, on_audio)
        scores["pair_cos/text"] = (train.ids, pair_vt, False, on_text)
        el2n_va = _blockwise_el2n(train.video_audio, train.audio)
        scores["el2n/audio"] = (train.ids, el2n_va, True, on_audio)
        scores["el2n/text"] = (
            train.ids,
            _blockwise_el2n(train.video_text, text_mean),
            True,
            on_text,
        )
    out: dict[str, Any] = {}
    for name, (ids, values, higher, targets) in scores.items():
        out[name] = {}
        for target, flags in targets.items():
            truth = [noise_flag(labels[i], flags) for i in ids]
            keep = [j for j, t in enumerate(truth) if t is not None]
            if keep:
                res = detection_metrics(
                    values[keep], [bool(truth[j]) for j in keep], higher_is_noisier=higher
                )
                out[name][target] = res.to_dict()
    return out


def _held_out_losses(
    feats: SplitFeatures, roles: Roles, temperature: float, block: int = HELD_OUT_BLOCK
) -> dict[str, Any]:
    """Each space's training loss on the split, in random blocks of ``block`` clips.

    NCE (video-audio) and MIL-NCE (video-text) as in training, mean per clip; ``chance`` is
    ln(block), the loss of a model that cannot tell the block's clips apart. A remainder smaller
    than a block is left out so that every block has the same chance level.
    """
    n = len(feats)
    if n < block:
        return {}
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    va: list[Tensor] = []
    vt: list[Tensor] = []
    for start in range(0, n - block + 1, block):
        rows = order[start : start + block]
        a = feats.video_audio[rows].double()
        va.append(nce(a, feats.audio[rows].double(), temperature, reduction="none"))
        v, t = feats.video_text[rows].double(), feats.text[rows].double()
        valid = feats.text_valid[rows]
        vt.append(milnce(v, t, temperature, valid=valid, reduction="none"))
    chance = math.log(block)
    return {
        space: {"loss": float(torch.cat(parts).mean()), "chance": chance, "block": block}
        for space, parts in ((roles.audio_space, va), (roles.text_space, vt))
    }


def _mean_caption(text: Tensor, valid: Tensor) -> Tensor:
    weights = valid.to(text.dtype).unsqueeze(-1)
    summed = (text * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
    return torch.nn.functional.normalize(summed, dim=-1)


def _blockwise_el2n(anchor: Tensor, partner: Tensor, seed: int = 0) -> np.ndarray:
    """EL2N of each matched pair among EL2N_BLOCK random others (like a training batch)."""
    order = torch.randperm(anchor.shape[0], generator=torch.Generator().manual_seed(seed))
    out = torch.empty(anchor.shape[0], dtype=torch.float64)
    for rows in torch.tensor_split(order, max(1, round(len(order) / EL2N_BLOCK))):
        sim = anchor[rows] @ partner[rows].T
        out[rows] = error_norm(sim, EL2N_TEMPERATURE)
    return out.numpy()

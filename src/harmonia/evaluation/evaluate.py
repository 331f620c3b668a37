"""`evaluate(model, dataset_dir, split)`: the whole downstream protocol as one JSON-ready dict.

On the evaluation split (its misaligned samples, if any, are left out and counted):
- zero-shot digit and motion classification of videos against averaged caption prompts;
- retrieval text->video, audio->video and video->audio at instance level (the sample's own
  caption / audio / clip is the only hit) and class level (any clip of the same class is a hit:
  digit and motion for captions, digit for audio, which does not carry the motion);
- each space's training loss on held-out blocks of clips;
- linear probes on frozen pooled features, fitted on the training split, scored on this split.
On the training split, when a ledger is given: how well its conflict scores find the samples the
index flags as misaligned, next to two baselines computed from the final model (pair cosine and
an EL2N-style error norm of each matched pair within random blocks of about 32).

A metric runs when what it needs is there: the labels it reads on every sample it is computed
on, flags for noise detection, a training split for probes. Otherwise it is left out of its
section and listed under ``skipped_metrics`` (metric path -> reason); a dataset without any
labels (imported from one's own videos) gets instance-level retrieval and the losses only.
Clips without audio (the model masks an all-zero waveform) are left out of audio retrieval and
the video-audio loss.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from harmonia.errors import DataError
from harmonia.evaluation.features import SplitFeatures, encode_split
from harmonia.evaluation.labels import (
    AUDIO_FLAG,
    NO_LABELS,
    NOISE_FLAGS,
    TEXT_FLAG,
    has_ground_truth,
    label_of,
    missing_label,
    noise_flag,
)
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
BASELINES = ("pair_cos/audio", "pair_cos/text", "el2n/audio", "el2n/text")
"""The final-model noise-detection scores (see `_noise_detection`)."""


class GroundTruth:
    """The index's labels, and the metrics skipped for want of them (metric path -> reason)."""

    def __init__(self, labels: Labels) -> None:
        self.labels = labels
        self.labelled = has_ground_truth(labels.values())
        self.skipped: dict[str, str] = {}

    def skip(self, metric: str, reason: str) -> None:
        """Record why ``metric`` did not run (the first reason given is kept)."""
        self.skipped.setdefault(metric, reason)

    def skip_unlabelled(self, metric: str, reason: str) -> None:
        """`skip` for want of labels: a dataset without any says so rather than naming one."""
        self.skip(metric, reason if self.labelled else NO_LABELS)

    def no_flags(self, where: str) -> str:
        """Why noise detection is skipped on samples none of which has a misalignment flag."""
        if not self.labelled:
            return NO_LABELS
        return f"no misalignment flags ({', '.join(NOISE_FLAGS)}) on the samples of {where}"

    def targets(
        self, metric: str, ids: Sequence[str], key: str, fallback: str | None = None, *, where: str
    ) -> list[Any] | None:
        """The label of every sample in ``ids`` (`label_of`), or None with ``metric`` skipped."""
        records = [self.labels[i] for i in ids]
        reason = missing_label(records, key, fallback, where=where)
        if reason is not None:
            self.skip_unlabelled(metric, reason)
            return None
        return [label_of(r, key, fallback) for r in records]


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
    ground = GroundTruth(labels)
    notes: list[str] = []

    encoded = encode_split(
        model, source(split), roles, max_samples=max_eval, desc=split, progress=progress
    )
    clean = [i for i, sid in enumerate(encoded.ids) if noise_flag(labels[sid]) is not True]
    excluded = len(encoded) - len(clean)
    feats = encoded.subset(clean)
    if excluded:
        notes.append(f"{excluded} misaligned samples of '{split}' left out (index flags)")
    silent = int((~feats.has_audio()).sum())
    if silent:
        notes.append(
            f"{silent} clips of '{split}' have no audio: left out of audio retrieval "
            f"and the {roles.audio_space} loss"
        )

    train: SplitFeatures | None = None
    no_train = ""
    if train_split not in splits or train_split == split:
        notes.append(f"no '{train_split}' split to fit linear probes on: probes skipped")
        no_train = f"no '{train_split}' split to fit on"
    elif not has_ground_truth(r for r in labels.values() if r.get("split") == train_split):
        # nothing on the training split needs its features: do not encode it
        no_train = NO_LABELS if not ground.labelled else f"no labels on '{train_split}'"
    else:
        train = encode_split(
            model,
            source(train_split),
            roles,
            max_samples=max_train,
            desc=train_split,
            progress=progress,
        )

    result: dict[str, Any] = {
        "schema": SCHEMA,
        "dataset": str(dataset_dir),
        "split": split,
        "train_split": train_split if train is not None else None,
        "n_samples": len(feats),
        "n_excluded": excluded,
        "n_train": len(train) if train is not None else 0,
        "roles": dict(roles.__dict__),
        "zero_shot": _zero_shot(model, feats, ground, roles, split),
        "retrieval": _retrieval(feats, ground, split),
        "losses": _held_out_losses(feats, roles, temperature, ground, HELD_OUT_BLOCK),
        "linear_probe": _probes(train, feats, ground, roles, (train_split, split), no_train),
        "noise_detection": _noise_detection(ledger, train, ground, notes, train_split, no_train),
        "skipped": [*encoded.skipped, *(train.skipped if train is not None else [])],
        "skipped_metrics": ground.skipped,
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


def _zero_shot(
    model: Any, feats: SplitFeatures, ground: GroundTruth, roles: Roles, split: str
) -> dict[str, Any]:
    def encode_text(prompts: list[str]) -> Tensor:
        return model.encode(roles.text, prompts, space=roles.text_space).float().cpu()

    out: dict[str, Any] = {}
    for task, prompts in (("digit", digit_prompts()), ("motion", motion_prompts())):
        targets = ground.targets(f"zero_shot/{task}", feats.ids, task, where=f"'{split}'")
        if targets is None:
            continue
        classes, class_emb = embed_prompts(encode_text, prompts)
        res = zero_shot_accuracy(feats.video_text, class_emb, classes, targets).to_dict()
        res["prompts_per_class"] = len(next(iter(prompts.values())))
        out[task] = res
    return out


def _retrieval(feats: SplitFeatures, ground: GroundTruth, split: str) -> dict[str, Any]:
    """Instance level always; class level where every clip has the labels it reads."""
    where = f"'{split}'"
    recs = [ground.labels[i] for i in feats.ids]

    # text -> video: every distinct caption of a clip is a query
    rows, query_ids, query_rows = [], [], []
    for i, (caps, valid) in enumerate(zip(feats.captions, feats.text_valid, strict=True)):
        seen: set[str] = set()
        for k, text in enumerate(caps):
            if k < len(valid) and bool(valid[k]) and text not in seen:
                seen.add(text)
                rows.append(feats.text[i, k])
                query_ids.append(feats.ids[i])
                query_rows.append(i)
    out: dict[str, dict[str, Any]] = {}
    if rows:
        sim = (torch.stack(rows) @ feats.video_text.T).double().numpy()
        entry = {
            "instance": retrieval_metrics(
                sim, instance_relevance(query_ids, feats.ids), relevance="instance"
            ).to_dict()
        }
        metric = "retrieval/text->video/class"
        digit = ground.targets(metric, feats.ids, "digit", where=where)
        motion = ground.targets(metric, feats.ids, "motion", where=where)
        if digit is not None and motion is not None:
            query_class = [
                (
                    label_of(recs[i], "caption_digit", "digit"),
                    label_of(recs[i], "caption_motion", "motion"),
                )
                for i in query_rows
            ]
            video_class = list(zip(digit, motion, strict=True))
            entry["class"] = retrieval_metrics(
                sim, class_relevance(query_class, video_class), relevance="class:digit+motion"
            ).to_dict()
        out["text->video"] = entry
    else:
        ground.skip("retrieval/text->video", f"no captions on the samples of {where}")

    audible = feats.has_audio().nonzero().flatten().tolist()
    if not audible:
        for direction in ("audio->video", "video->audio"):
            ground.skip(f"retrieval/{direction}", f"no clip of {where} has audio")
        return out
    audio_ids = [feats.ids[i] for i in audible]
    sim_av = (feats.audio[audible] @ feats.video_audio.T).double().numpy()
    for direction, sim, q_ids, g_ids, audio_is_query in (
        ("audio->video", sim_av, audio_ids, feats.ids, True),
        ("video->audio", sim_av.T, feats.ids, audio_ids, False),
    ):
        out[direction] = {
            "instance": retrieval_metrics(
                sim, instance_relevance(q_ids, g_ids), relevance="instance"
            ).to_dict()
        }
        video_digit = ground.targets(
            f"retrieval/{direction}/class", feats.ids, "digit", where=where
        )
        if video_digit is not None:
            audio_digit = [label_of(recs[i], "audio_digit", "digit") for i in audible]
            q_cls, g_cls = (
                (audio_digit, video_digit) if audio_is_query else (video_digit, audio_digit)
            )
            out[direction]["class"] = retrieval_metrics(
                sim, class_relevance(q_cls, g_cls), relevance="class:digit"
            ).to_dict()
    return out


def _probes(
    train: SplitFeatures | None,
    feats: SplitFeatures,
    ground: GroundTruth,
    roles: Roles,
    splits: tuple[str, str],
    no_train: str,
) -> dict[str, Any]:
    """Each probe whose label every sample of both splits has (``splits``: train, eval)."""
    out: dict[str, Any] = {}
    for modality, task, key in (
        (roles.video, "digit", "digit"),
        (roles.video, "motion", "motion"),
        (roles.audio, "digit", "audio_digit"),
    ):
        metric = f"linear_probe/{modality}/{task}"
        if train is None:
            ground.skip(metric, no_train)
            continue
        fitted = ground.targets(metric, train.ids, key, task, where=f"'{splits[0]}'")
        scored = ground.targets(metric, feats.ids, key, task, where=f"'{splits[1]}'")
        if fitted is None or scored is None:
            continue
        res = linear_probe(train.pooled[modality], fitted, feats.pooled[modality], scored)
        out[f"{modality}/{task}"] = res.to_dict()
    return out


def _noise_detection(
    ledger: Sequence[LedgerEntry] | None,
    train: SplitFeatures | None,
    ground: GroundTruth,
    notes: list[str],
    train_split: str,
    no_train: str,
) -> dict[str, Any]:
    """Each available score against the flags it can see.

    The ledger's conflict score is scored against any misalignment and against caption-only and
    audio-only flags; the final-model baselines of a pair (video-audio, video-text) only against
    the flag of that pair's partner.
    """
    labels = ground.labels
    text_flag: tuple[str, ...] = (TEXT_FLAG,)
    audio_flag: tuple[str, ...] = (AUDIO_FLAG,)
    # name -> (ids, values, higher_is_noisier, {target: flags scored against})
    scores: dict[str, tuple[list[str], np.ndarray, bool, dict[str, tuple[str, ...]]]] = {}
    if not ledger:
        ground.skip("noise_detection/ledger", "no ledger (the run has no ledger.csv)")
    else:
        indexed = any(r.id in labels for r in ledger)
        known = [r for r in ledger if r.id in labels and noise_flag(labels[r.id]) is not None]
        if known:
            targets = {"any": NOISE_FLAGS, "text": text_flag, "audio": audio_flag}
            values = np.array([r.score for r in known])
            scores["ledger"] = ([r.id for r in known], values, False, targets)
        elif indexed:
            ground.skip("noise_detection/ledger", ground.no_flags("the ledger"))
        else:
            notes.append("ledger ids not found in this dataset's index: no ledger noise detection")
            ground.skip("noise_detection/ledger", "no ledger id is in the dataset's index")
    baseline_reason = no_train
    if train is not None:
        where = f"'{train_split}'"
        if not any(noise_flag(labels[i]) is not None for i in train.ids):
            baseline_reason = ground.no_flags(where)
        elif not any(noise_flag(labels[i]) for i in train.ids):
            baseline_reason = f"no sample of {where} is flagged misaligned"
    if train is None or baseline_reason:
        for name in BASELINES:
            ground.skip(f"noise_detection/{name}", baseline_reason)
    else:
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
    feats: SplitFeatures,
    roles: Roles,
    temperature: float,
    ground: GroundTruth,
    block: int = HELD_OUT_BLOCK,
) -> dict[str, Any]:
    """Each space's training loss on the split, in random blocks of ``block`` clips.

    NCE (video-audio) and MIL-NCE (video-text) as in training, mean per clip; ``chance`` is
    ln(block), the loss of a model that cannot tell the block's clips apart. Only clips that
    have the partner (audio; at least one caption) are blocked, and a remainder smaller than a
    block is left out, so that every block has the same chance level.
    """

    def audio_loss(rows: Tensor) -> Tensor:
        a = feats.video_audio[rows].double()
        return nce(a, feats.audio[rows].double(), temperature, reduction="none")

    def text_loss(rows: Tensor) -> Tensor:
        v, t = feats.video_text[rows].double(), feats.text[rows].double()
        return milnce(v, t, temperature, valid=feats.text_valid[rows], reduction="none")

    out: dict[str, Any] = {}
    for space, present, loss in (
        (roles.audio_space, feats.has_audio(), audio_loss),
        (roles.text_space, feats.text_valid.any(dim=1), text_loss),
    ):
        candidates = present.nonzero().flatten()
        n = len(candidates)
        if n < block:
            ground.skip(
                f"losses/{space}", f"fewer clips with both modalities than one block ({block})"
            )
            continue
        order = candidates[torch.randperm(n, generator=torch.Generator().manual_seed(0))]
        parts = [loss(order[start : start + block]) for start in range(0, n - block + 1, block)]
        chance = math.log(block)
        out[space] = {"loss": float(torch.cat(parts).mean()), "chance": chance, "block": block}
    return out


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

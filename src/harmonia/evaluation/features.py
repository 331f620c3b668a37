"""Encode a split once with a frozen model: pooled features and common-space embeddings by id."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from harmonia.evaluation.roles import Roles


@dataclass
class SplitFeatures:
    """Everything evaluation needs from one pass over a split, rows aligned with `ids`."""

    ids: list[str]
    pooled: dict[str, np.ndarray]
    """modality -> [N, D] pooled backbone feature (video, audio), float64, for linear probes."""
    video_audio: Tensor
    """[N, E] video embedding in the audio space."""
    audio: Tensor
    """[N, E] audio embedding in the audio space."""
    video_text: Tensor
    """[N, E] video embedding in the text space."""
    text: Tensor
    """[N, K, E] caption embeddings in the text space."""
    text_valid: Tensor
    """[N, K] bool: which caption slots hold a real caption."""
    captions: list[list[str]]
    audio_valid: Tensor | None = None
    """[N] bool: which clips have audio (False for a silent clip, which the model masks);
    None means every clip has."""
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def has_audio(self) -> Tensor:
        """[N] bool: the clips whose audio the model did not mask as missing."""
        if self.audio_valid is None:
            return torch.ones(len(self.ids), dtype=torch.bool)
        return self.audio_valid

    def subset(self, keep: Iterable[int]) -> SplitFeatures:
        """The rows `keep` (in that order)."""
        rows = list(keep)
        index = torch.as_tensor(rows, dtype=torch.long)
        return SplitFeatures(
            ids=[self.ids[i] for i in rows],
            pooled={m: x[rows] for m, x in self.pooled.items()},
            video_audio=self.video_audio[index],
            audio=self.audio[index],
            video_text=self.video_text[index],
            text=self.text[index],
            text_valid=self.text_valid[index],
            captions=[self.captions[i] for i in rows],
            audio_valid=None if self.audio_valid is None else self.audio_valid[index],
            skipped=self.skipped,
        )


@torch.no_grad()
def encode_split(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    roles: Roles,
    *,
    max_samples: int | None = None,
    desc: str = "encoding",
    progress: bool = False,
) -> SplitFeatures:
    """Run the model in eval mode over `batches` (collated batches, see the data contract)."""
    was_training = model.training
    model.eval()
    ids: list[str] = []
    captions: list[list[str]] = []
    skipped: list[dict[str, Any]] = []
    parts: dict[str, list[Tensor]] = {k: [] for k in ("fv", "fa", "va", "a", "vt", "t", "tv", "av")}
    bar = tqdm(desc=desc, unit="clip", disable=not progress, leave=False)
    try:
        for batch in batches:
            skipped.extend(batch.get("skipped", []))
            take = len(batch["id"])
            if max_samples is not None:
                take = min(take, max_samples - len(ids))
            if take <= 0:
                continue  # every sample of this batch was corrupt
            inputs = {m: batch[m] for m in (roles.video, roles.audio, roles.text)}
            out = model(inputs)
            emb = out.embeddings
            text = emb[roles.text_space][roles.text]
            valid = out.valid.get(roles.text, torch.ones(text.shape[:2], dtype=torch.bool))
            audio_valid = out.valid.get(roles.audio, torch.ones(text.shape[0], dtype=torch.bool))
            new = {
                "fv": out.features[roles.video],
                "fa": out.features[roles.audio],
                "va": emb[roles.audio_space][roles.video],
                "a": emb[roles.audio_space][roles.audio],
                "vt": emb[roles.text_space][roles.video],
                "t": text,
                "tv": valid,
                "av": audio_valid,
            }
            for key, value in new.items():
                parts[key].append(value[:take].detach().float().cpu())
            ids.extend(str(i) for i in batch["id"][:take])
            captions.extend([list(c) for c in batch[roles.text][:take]])
            bar.update(take)
            if max_samples is not None and len(ids) >= max_samples:
                break
    finally:
        bar.close()
        model.train(was_training)
    if not ids:
        raise ValueError("the split yielded no decodable samples")
    cat = {k: _cat_padded(v) for k, v in parts.items()}
    return SplitFeatures(
        ids=ids,
        pooled={
            roles.video: cat["fv"].double().numpy(),
            roles.audio: cat["fa"].double().numpy(),
        },
        video_audio=cat["va"],
        audio=cat["a"],
        video_text=cat["vt"],
        text=cat["t"],
        text_valid=cat["tv"].bool(),
        captions=captions,
        audio_valid=cat["av"].bool(),
        skipped=skipped,
    )


def _cat_padded(chunks: list[Tensor]) -> Tensor:
    """Concatenate along dim 0, padding dim 1 (caption slots) with zeros where batches differ."""
    if chunks[0].ndim < 2 or len({c.shape[1] for c in chunks}) == 1:
        return torch.cat(chunks)
    width = max(c.shape[1] for c in chunks)
    padded = []
    for c in chunks:
        pad = torch.zeros((c.shape[0], width - c.shape[1], *c.shape[2:]), dtype=c.dtype)
        padded.append(torch.cat([c, pad], dim=1))
    return torch.cat(padded)

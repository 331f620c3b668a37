"""The tiny model memorizes 32 clean AV-MNIST-T triplets: retrieval accuracy 1.0 in bounded steps.

The end-to-end check that tokenizers, backbone, heads and both losses learn together on real
decoded media (not synthetic tensors): every video must retrieve its own audio and its own
captions (and back) among the 32, which needs instance-level memorization since several clips
share a digit and motion.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from harmonia.data import ShardDataset, collate, load_labels
from harmonia.losses import ContrastiveObjective, default_specs
from harmonia.models import VATT, ModelConfig, WordTokenizer

SAMPLES = 32
MAX_STEPS = 300
CHECK_EVERY = 20


def clean_batch(root: Path) -> dict[str, Any]:
    labels = load_labels(root)
    dataset = ShardDataset(root, ["train", "val", "test"])
    clean = [
        i
        for i, sid in enumerate(dataset.ids)
        if not labels[sid].get("misaligned_text") and not labels[sid].get("misaligned_audio")
    ]
    assert len(clean) >= SAMPLES, f"the tiny dataset has only {len(clean)} clean triplets"
    return collate([dataset[i] for i in clean[:SAMPLES]])


def retrieval_accuracy(model: VATT, batch: dict[str, Any]) -> dict[str, float]:
    """Top-1 instance retrieval in both directions; a clip's text score is its best caption."""
    model.eval()
    with torch.no_grad():
        out = model(batch)
    model.train()
    va, vt = out.embeddings["va"], out.embeddings["vt"]
    audio = va["video"] @ va["audio"].T
    text = torch.einsum("be,nke->bnk", vt["video"], vt["text"]).amax(dim=2)
    target = torch.arange(len(audio))
    scores = {
        "video->audio": audio,
        "audio->video": audio.T,
        "video->text": text,
        "text->video": text.T,
    }
    return {k: (s.argmax(dim=1) == target).float().mean().item() for k, s in scores.items()}


def test_tiny_model_overfits_32_clean_triplets(tiny_dataset: Path) -> None:
    batch = clean_batch(tiny_dataset)
    torch.manual_seed(0)
    words = WordTokenizer.build(c for captions in batch["text"] for c in captions)
    model = VATT(ModelConfig.named("tiny"), words).train()
    objective = ContrastiveObjective(default_specs(model.config))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.0)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 30))
    first = retrieval_accuracy(model, batch)
    history = []
    for step in range(1, MAX_STEPS + 1):
        losses = objective(model(batch))
        optimizer.zero_grad()
        sum(v.mean() for v in losses.values()).backward()
        optimizer.step()
        warmup.step()
        if step % CHECK_EVERY == 0:
            accuracy = retrieval_accuracy(model, batch)
            history.append((step, accuracy))
            if min(accuracy.values()) == 1.0:
                break
    assert max(first.values()) < 0.5, first
    assert min(history[-1][1].values()) == 1.0, history

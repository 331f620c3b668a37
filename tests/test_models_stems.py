"""Conv stems: token grid, per-sample independence, patch layout and config errors."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from harmonia.errors import ConfigError
from harmonia.models import VATT, ModelConfig, WordTokenizer
from harmonia.models.config import StemConfig
from harmonia.models.stems import ConvStem
from harmonia.models.synthetic import WORDS, random_batch
from harmonia.models.tokenizers import _cells_to_patches

VIDEO = {
    "shape": [4, 16, 16, 3],
    "patch": [2, 8, 8],
    "drop_token": 0.0,
    "stem": {"channels": [4, 8], "kernel": [1, 3, 3], "pool": [1, 2, 2], "groups": 2},
}
AUDIO = {
    "shape": [2560],
    "patch": [640],
    "drop_token": 0.0,
    "features": "log_mel",
    "log_mel": {"mel_bins": 16},
    "stem": {"channels": [4], "kernel": [3, 3], "pool": [2, 2], "groups": 2},
}


def config(**modalities: Any) -> ModelConfig:
    return ModelConfig.named(
        "tiny",
        modalities={"video": VIDEO, "audio": AUDIO, **modalities},
        backbone={"width": 16, "depth": 1, "heads": 2},
    )


def test_stems_keep_the_token_grid_and_size_the_projection() -> None:
    cfg = config()
    video, audio = cfg.modalities["video"], cfg.modalities["audio"]
    assert video.grid == (2, 2, 2)
    # a (2, 8, 8) patch is (2, 2, 2) stem cells after two 2x2 pools, 8 channels each
    assert video.patch_values == 2 * 2 * 2 * 8
    # 640 samples = 8 log-mel frames (hop 80 at 8 kHz); one 2x2 pool -> 4 frames x 8 mel cells
    assert audio.grid == (4,)
    assert audio.patch_values == (640 // audio.spectrogram.hop // 2) * (16 // 2) * 4
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    model = VATT(cfg, WordTokenizer.build([" ".join(WORDS)]))
    tokens, _ = model.tokenizer_of("video")(
        model.tokenizer_of("video")
        .prepare(random_batch(cfg, 3)["video"], "cpu", torch.float32)
        .inputs
    )
    assert tokens.shape == (3, 1 + 8, 16)


def test_stem_output_of_a_sample_does_not_depend_on_the_batch() -> None:
    torch.manual_seed(0)
    stem = ConvStem(3, StemConfig(channels=(4, 8), kernel=(3, 3, 3), pool=(1, 2, 2), groups=2))
    x = torch.randn(5, 3, 4, 16, 16, dtype=torch.float64)
    stem = stem.double()
    together = stem(x)
    alone = torch.cat([stem(x[i : i + 1]) for i in range(5)])
    assert torch.allclose(together, alone, atol=1e-12)
    assert together.shape == (5, 8, 4, 4, 4)


def test_cells_become_patches_in_grid_order() -> None:
    batch, channels, t, h, w = 2, 3, 4, 4, 6
    cells = torch.randn(batch, channels, t, h, w)
    grid = (2, 2, 3)
    patches = _cells_to_patches(cells, grid)
    pt, ph, pw = t // 2, h // 2, w // 3
    for b in range(batch):
        for token, (i, j, k) in enumerate(
            (i, j, k) for i in range(2) for j in range(2) for k in range(3)
        ):
            block = cells[b, :, i * pt : (i + 1) * pt, j * ph : (j + 1) * ph, k * pw : (k + 1) * pw]
            assert torch.equal(patches[b, token], block.permute(1, 2, 3, 0).reshape(-1))


def bad(**modalities: Any) -> str:
    with pytest.raises(ConfigError) as err:
        config(**modalities)
    return str(err.value)


def test_invalid_stems_name_the_field() -> None:
    pool3 = {**VIDEO, "stem": {**VIDEO["stem"], "pool": [1, 4, 4]}}  # 16x total > patch 8
    assert "modalities.video.stem.pool" in bad(video=pool3)
    even = {**VIDEO, "stem": {**VIDEO["stem"], "kernel": [1, 2, 2]}}
    assert "modalities.video.stem.kernel[1]" in bad(video=even)
    flat = {**VIDEO, "stem": {**VIDEO["stem"], "kernel": [3, 3], "pool": [2, 2]}}
    assert "modalities.video.stem.kernel" in bad(video=flat)
    groups = {**VIDEO, "stem": {**VIDEO["stem"], "channels": [6, 8], "groups": 4}}
    assert "modalities.video.stem.groups" in bad(video=groups)
    raw = {**AUDIO, "features": "raw", "log_mel": None}
    assert "modalities.audio.stem" in bad(audio=raw)
    assert "modalities.text.stem" in bad(text={"max_length": 8, "stem": {}})

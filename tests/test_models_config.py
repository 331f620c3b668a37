"""ModelConfig: named sizes, nested overrides, round trip, and errors that name the field."""

from __future__ import annotations

from typing import Any

import pytest

from harmonia.errors import ConfigError
from harmonia.models import VATT, ModalityConfig, ModelConfig


@pytest.mark.parametrize("size", ["tiny", "small", "base"])
def test_named_sizes_are_valid_and_round_trip(size: str) -> None:
    cfg = ModelConfig.named(size)
    cfg.check()
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.anchor == "video"
    assert cfg.space_order() == ["va", "vt"]


def test_token_counts_stay_small_for_cpu_sizes() -> None:
    for size, video_grid, audio_tokens in (
        ("tiny", (4, 4, 4), 25),
        ("small", (4, 4, 4), 25),
        ("base", (2, 2, 2), 125),
    ):
        mods = ModelConfig.named(size).modalities
        assert mods["video"].grid == video_grid
        assert mods["audio"].grid == (audio_tokens,)
    assert ModelConfig.named("base").modalities["audio"].patch == (128,)
    assert ModelConfig.named("base").modalities["video"].stem is None  # VATT's linear patches
    assert ModelConfig.named("tiny").modalities["video"].stem is not None


def test_nested_overrides_merge_into_the_size() -> None:
    cfg = ModelConfig.named(
        "tiny", backbone={"depth": 3}, modalities={"video": {"patch": [1, 8, 8], "drop_token": 0.5}}
    )
    assert cfg.backbone.depth == 3 and cfg.backbone.width == 64
    assert cfg.modalities["video"].patch == (1, 8, 8)
    assert cfg.modalities["video"].grid == (8, 4, 4)
    # one 8x8 patch is one cell of the conv stem's 64 output channels (8x downsampling)
    assert cfg.modalities["video"].patch_values == 64
    assert cfg.modalities["video"].stem is not None
    assert cfg.modalities["video"].drop_token == 0.5 and cfg.modalities["audio"].drop_token == 0.0


def bad(**overrides: Any) -> str:
    with pytest.raises(ConfigError) as err:
        ModelConfig.named("tiny", **overrides)
    return str(err.value)


def test_invalid_values_name_the_field() -> None:
    assert "backbone.depth" in bad(backbone={"depth": 0})
    assert "backbone.heads" in bad(backbone={"heads": 5})
    assert "backbone.kind" in bad(backbone={"kind": "shared"})
    assert "modalities.video.patch[1]" in bad(modalities={"video": {"patch": [4, 15, 16]}})
    assert "modalities.audio.drop_token" in bad(modalities={"audio": {"drop_token": 1.0}})
    assert "modalities.text.max_length" in bad(modalities={"text": {"max_length": 0}})
    assert "modalities.text.drop_token" in bad(modalities={"text": {"drop_token": 0.5}})
    assert "modalities.audio.mean" in bad(modalities={"audio": {"mean": 0.5}})
    assert "spaces.va.dim" in bad(spaces={"va": {"dim": -1}})
    assert "spaces.vt.heads.video.source" in bad(
        spaces={"vt": {"heads": {"video": {"source": "xx"}}}}
    )
    assert "spaces.va.heads.depth" in bad(spaces={"va": {"heads": {"depth": {}}}})
    assert "anchor" in bad(anchor="smell")
    assert "did you mean 'backbone.depth'" in bad(backbone={"deepth": 2})
    with pytest.raises(ConfigError, match="did you mean 'tiny'"):
        ModelConfig.named("tinyy")


def test_space_cycles_are_rejected() -> None:
    spaces = {
        "va": {"heads": {"video": {"source": "vt"}}},
        "vt": {"heads": {"video": {"source": "va"}}},
    }
    assert "cycle" in bad(spaces=spaces)


def test_configs_built_in_python_are_checked_when_the_model_is_built() -> None:
    cfg = ModelConfig.named("tiny")
    broken = ModelConfig(
        modalities={**cfg.modalities, "audio": ModalityConfig("audio", (1000,), (300,))},
        backbone=cfg.backbone,
        spaces=cfg.spaces,
    )
    with pytest.raises(ConfigError, match=r"modalities\.audio\.patch\[0\]: 300 does not divide"):
        VATT(broken)

"""The shipped model sizes, as plain config data (what `ModelConfig.named` starts from).

All three read the AV-MNIST-T default clip: 16 frames of 64x64 RGB, 32,000 audio samples
(2 s at 16 kHz), captions of up to 16 words. ``tiny`` runs the test suite on CPU, ``small`` runs
CPU experiments in minutes, ``base`` has VATT-Base's transformer (768 wide, 12 layers, 12 heads)
and VATT's patches (4x16x16 voxels, 128 audio samples).

Video pixels are scaled to [0, 1] and divided by 0.3 without centering: AV-MNIST-T's background
is black, so an empty patch stays a zero vector and its token is its position alone. With the
symmetric (x - 0.5) / 0.5 the tiny model collapsed at initialization when overfitting 32 clean
triplets (both losses stuck at log B for 200 steps); with this scaling it reaches retrieval
accuracy 1.0 in about 80 steps (tests/test_models_overfit.py).
"""

from __future__ import annotations

from typing import Any


def _size(
    width: int,
    depth: int,
    heads: int,
    video_patch: list[int],
    audio_patch: int,
    drop_token: float,
    va_dim: int,
    vt_dim: int,
) -> dict[str, Any]:
    return {
        "modalities": {
            "video": {
                "kind": "video",
                "shape": [16, 64, 64, 3],
                "patch": video_patch,
                "drop_token": drop_token,
                "mean": 0.0,
                "std": 0.3,
            },
            "audio": {
                "kind": "audio",
                "shape": [32000],
                "patch": [audio_patch],
                "drop_token": drop_token,
            },
            "text": {"kind": "text", "max_length": 16},
        },
        "backbone": {
            "kind": "modality_agnostic",
            "width": width,
            "depth": depth,
            "heads": heads,
            "mlp_ratio": 4.0,
            "dropout": 0.0,
        },
        "spaces": {
            "va": {
                "dim": va_dim,
                "heads": {"video": {"kind": "mlp"}, "audio": {"kind": "linear"}},
            },
            "vt": {
                "dim": vt_dim,
                "heads": {
                    "video": {"kind": "linear", "source": "va"},
                    "text": {"kind": "linear"},
                },
            },
        },
        "anchor": "video",
    }


# fmt: off
_TABLE: dict[str, tuple[int, int, int, list[int], int, float, int, int]] = {
    #        width depth heads video patch   audio drop   va   vt
    "tiny":  (64,   2,    4,   [4, 16, 16],  640,  0.25,  64,  32),
    "small": (128,  4,    4,   [4, 16, 16],  640,  0.25,  128, 64),
    "base":  (768,  12,   12,  [4, 16, 16],  128,  0.5,   512, 256),
}
# fmt: on

SIZES: dict[str, dict[str, Any]] = {name: _size(*row) for name, row in _TABLE.items()}
"""Size name -> ModelConfig data. Tokens per clip: video 64 for all sizes; audio 50 / 50 / 250."""

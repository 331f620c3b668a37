"""The shipped model sizes, as plain config data (what `ModelConfig.named` starts from).

All three read the AV-MNIST-T default clip (`harmonia.data.spec.MediaSpec`): 8 frames of 32x32
RGB at 4 fps, 16,000 audio samples (2 s at 8 kHz, the Free Spoken Digit recordings' own rate),
captions of up to 16 words. ``tiny`` runs the demo and the test suite on CPU, ``small`` runs CPU
experiments in minutes; both put a per-frame conv stem in front of the video patches and feed
the audio tower log-mel frames, because with VATT's linear patches the CPU sizes learned motion
but not the digit (docs/model.md, *Front ends*, has the measurements). ``base`` has VATT-Base's
transformer (768 wide, 12 layers, 12 heads) and VATT's raw front ends: 4x16x16 voxel patches
and 128-sample waveform patches.

Video pixels are scaled to [0, 1] and divided by 0.3 without centering: AV-MNIST-T's background
is black, so an empty patch stays a zero vector and its token is its position alone. With the
symmetric (x - 0.5) / 0.5 the tiny model collapsed at initialization when overfitting 32 clean
triplets (both losses stuck at log B for 200 steps); with this scaling it reaches retrieval
accuracy 1.0 in about 80 steps (tests/test_models_overfit.py).
"""

from __future__ import annotations

from typing import Any

from harmonia.data.spec import MediaSpec

CLIP = MediaSpec()
"""The clip every shipped size reads: the default of `harmonia data build`."""

LOG_MEL_8K: dict[str, Any] = {
    "sample_rate": CLIP.sample_rate,
    "window": CLIP.sample_rate // 40,  # 25 ms
    "hop": CLIP.sample_rate // 100,  # 10 ms
    "n_fft": 256,
    "mel_bins": 40,
}
"""Speech analysis at the clip's 8 kHz: 25 ms windows every 10 ms, 40 mel bands."""

VIDEO_STEM: dict[str, Any] = {"channels": [16, 32, 64], "kernel": [1, 3, 3], "pool": [1, 2, 2]}
"""Per-frame conv -> max-pool -> GroupNorm -> GELU, three times (8x spatial downsampling)."""


def _video(patch: list[int], drop: float, stem: dict[str, Any] | None) -> dict[str, Any]:
    video: dict[str, Any] = {
        "kind": "video",
        "shape": [CLIP.frames, CLIP.height, CLIP.width, 3],
        "patch": patch,
        "drop_token": drop,
        "mean": 0.0,
        "std": 0.3,
    }
    return video if stem is None else {**video, "stem": stem}


def _learned_front_ends(drop_video: float, drop_audio: float) -> dict[str, Any]:
    """The CPU sizes' front ends: a conv stem on each frame, log-mel audio patches."""
    return {
        "video": _video([2, 8, 8], drop_video, VIDEO_STEM),
        "audio": {
            "kind": "audio",
            "shape": [CLIP.audio_samples],
            "patch": [8 * LOG_MEL_8K["hop"]],  # 8 log-mel frames (80 ms) per token
            "drop_token": drop_audio,
            "features": "log_mel",
            "log_mel": LOG_MEL_8K,
        },
        "text": {"kind": "text", "max_length": 16},
    }


def _vatt_front_ends(drop: float) -> dict[str, Any]:
    """VATT's raw-signal front ends: linear voxel and waveform patches."""
    return {
        "video": _video([4, 16, 16], drop, None),
        "audio": {
            "kind": "audio",
            "shape": [CLIP.audio_samples],
            "patch": [128],
            "drop_token": drop,
        },
        "text": {"kind": "text", "max_length": 16},
    }


def _size(
    modalities: dict[str, Any], width: int, depth: int, heads: int, va_dim: int, vt_dim: int
) -> dict[str, Any]:
    return {
        "modalities": modalities,
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
SIZES: dict[str, dict[str, Any]] = {
    #                                front ends                  width depth heads  va   vt
    "tiny":  _size(_learned_front_ends(0.0, 0.0),                64,   2,    4,     64,  32),
    "small": _size(_learned_front_ends(0.0, 0.0),                128,  4,    4,     128, 64),
    "base":  _size(_vatt_front_ends(0.5),                        768,  12,   12,    512, 256),
}
# fmt: on
"""Size name -> ModelConfig data. Tokens per clip: video 64 / 64 / 8, audio 25 / 25 / 125."""

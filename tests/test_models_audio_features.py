"""The log-mel audio front end against a brute-force numpy reference, and its config."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from harmonia.errors import ConfigError
from harmonia.models import VATT, LogMelConfig, ModelConfig, WordTokenizer
from harmonia.models.audio_features import LOG_FLOOR, NORM_EPS, LogMel
from harmonia.models.synthetic import random_batch


def reference_log_mel(
    wave: np.ndarray,
    sample_rate: int,
    window: int,
    hop: int,
    n_fft: int,
    mel_bins: int,
    f_min: float,
    f_max: float,
) -> np.ndarray:
    """Frame by frame, bin by bin: the DFT sum, triangular filters, log, utterance z-score."""
    frames = len(wave) // hop
    padded = np.concatenate([wave, np.zeros(window)])
    hann = [math.sin(math.pi * n / window) ** 2 for n in range(window)]
    bins = n_fft // 2 + 1
    power = np.zeros((frames, bins))
    for i in range(frames):
        chunk = [padded[i * hop + n] * hann[n] for n in range(window)]
        for k in range(bins):
            phase = np.exp(-2j * np.pi * k * np.arange(window) / n_fft)
            power[i, k] = abs(np.dot(chunk, phase)) ** 2

    def mel(f: float) -> float:
        return 2595.0 * math.log10(1.0 + f / 700.0)

    def hz(m: float) -> float:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    lo, hi = mel(f_min), mel(f_max)
    points = [hz(lo + (hi - lo) * j / (mel_bins + 1)) for j in range(mel_bins + 2)]
    bank = np.zeros((mel_bins, bins))
    for m in range(mel_bins):
        left, centre, right = points[m], points[m + 1], points[m + 2]
        for k in range(bins):
            f = k * sample_rate / n_fft
            if left < f <= centre:
                bank[m, k] = (f - left) / (centre - left)
            elif centre < f < right:
                bank[m, k] = (right - f) / (right - centre)
    logmel = np.log(power @ bank.T + LOG_FLOOR)
    return (logmel - logmel.mean()) / (logmel.std(ddof=1) + NORM_EPS)


@pytest.mark.parametrize(
    ("window", "hop", "n_fft", "f_max"), [(40, 16, 64, 4000.0), (32, 32, 32, 8000.0)]
)
def test_log_mel_matches_a_brute_force_reference_in_float64(
    window: int, hop: int, n_fft: int, f_max: float
) -> None:
    rng = np.random.default_rng(0)
    waves = rng.uniform(-1, 1, size=(2, 320))
    waves[1, :100] = 0.0  # leading silence, as in the dataset's padded recordings
    front = LogMel(16000, window, hop, n_fft, 12, 50.0, f_max)
    got = front(torch.from_numpy(waves)).numpy()
    assert got.shape == (2, 320 // hop, 12)
    for wave, features in zip(waves, got, strict=True):
        want = reference_log_mel(wave, 16000, window, hop, n_fft, 12, 50.0, f_max)
        np.testing.assert_allclose(features, want, rtol=1e-9, atol=1e-9)


def test_log_mel_ignores_gain_and_tells_tones_apart() -> None:
    t = torch.arange(3200, dtype=torch.float64) / 16000
    low, high = torch.sin(2 * math.pi * 300 * t), torch.sin(2 * math.pi * 3000 * t)
    front = LogMel(16000, 400, 160, 512, 32, 0.0, 8000.0)
    noise = torch.rand(3200, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    quiet, loud, tone, other = front(torch.stack([0.05 * noise, 0.9 * noise, low, 0.5 * high]))
    # Per-utterance normalization removes gain (up to the log floor, far below this noise).
    assert torch.allclose(quiet, loud, atol=1e-3)
    assert int(tone.mean(0).argmax()) < int(other.mean(0).argmax())  # 300 Hz below 3 kHz


def log_mel_config(**log_mel: object) -> ModelConfig:
    audio = {"features": "log_mel", "log_mel": log_mel} if log_mel else {"features": "log_mel"}
    return ModelConfig.named("tiny", modalities={"audio": audio})


def test_log_mel_patches_span_the_same_samples_as_waveform_patches() -> None:
    cfg = log_mel_config(mel_bins=40)
    audio = cfg.modalities["audio"]
    assert audio.grid == ModelConfig.named("tiny").modalities["audio"].grid
    assert audio.patch_values == audio.patch[0] // audio.spectrogram.hop * 40
    torch.manual_seed(0)
    model = VATT(cfg, WordTokenizer.build(["a digit moves"])).eval()
    out = model(random_batch(cfg, 3))
    assert out.embeddings["va"]["audio"].shape == (3, 64)
    assert not any("log_mel" in key for key in model.state_dict())  # no new weights


@pytest.mark.parametrize(
    ("audio", "key"),
    [
        ({"features": "log_mel", "log_mel": {"hop": 300}}, "modalities.audio.patch[0]"),
        ({"features": "log_mel", "log_mel": {"window": 600}}, "modalities.audio.log_mel.window"),
        ({"features": "log_mel", "log_mel": {"f_max": 9000}}, "modalities.audio.log_mel.f_max"),
        ({"features": "log_mel", "log_mel": {"mel_bins": 0}}, "modalities.audio.log_mel.mel_bins"),
        ({"features": "raw", "log_mel": {"hop": 160}}, "modalities.audio.log_mel"),
        ({"features": "mfcc"}, "modalities.audio.features"),
    ],
)
def test_bad_log_mel_settings_name_the_field(audio: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(key) + ":"):
        ModelConfig.named("tiny", modalities={"audio": audio})


def test_log_mel_is_for_audio_only() -> None:
    with pytest.raises(
        ConfigError, match=r"modalities\.video\.features: log_mel is for kind audio"
    ):
        ModelConfig.named("tiny", modalities={"video": {"features": "log_mel"}})


def test_defaults() -> None:
    assert LogMelConfig().top_frequency == 8000.0
    for size in ("tiny", "small"):  # the CPU sizes learn from log-mel frames at the clip's 8 kHz
        audio = ModelConfig.named(size).modalities["audio"]
        assert audio.features == "log_mel" and audio.spectrogram.sample_rate == 8000
    assert ModelConfig.named("base").modalities["audio"].features == "raw"  # VATT's waveform


def test_configs_saved_before_the_field_load_as_raw_waveform() -> None:
    data = ModelConfig.named("tiny").to_dict()
    for modality in data["modalities"].values():
        del modality["features"], modality["log_mel"]
    assert ModelConfig.from_dict(data).modalities["audio"].features == "raw"


def test_a_log_mel_model_round_trips_through_save_pretrained(tmp_path: Path) -> None:
    cfg = log_mel_config()
    torch.manual_seed(0)
    model = VATT(cfg, WordTokenizer.build(["a digit moves"])).eval()
    batch = random_batch(cfg, 2)
    model.save_pretrained(tmp_path)
    loaded = VATT.from_pretrained(tmp_path).eval()
    assert loaded.config == cfg
    with torch.no_grad():
        want = model(batch).embeddings["va"]["audio"]
        got = loaded(batch).embeddings["va"]["audio"]
    torch.testing.assert_close(got, want)


def test_spec_augment_masks_whole_bands_in_training_only() -> None:
    from harmonia.models.audio_features import SpecAugment

    torch.manual_seed(0)
    x = torch.randn(6, 50, 16) + 5.0  # no zeros of its own
    augment = SpecAugment(time_masks=2, time_width=10, freq_masks=1, freq_width=4)
    assert torch.equal(augment.eval()(x), x)
    y = augment.train()(x)
    zero = y == 0
    kept = ~zero
    assert torch.equal(y[kept], x[kept])
    # a masked cell lies in a time band (its whole frame is zero) or a frequency band (its bin)
    frames, bins = zero.all(dim=2), zero.all(dim=1)
    assert torch.equal(zero, frames[:, :, None] | bins[:, None, :])
    assert int(frames.sum(dim=1).max()) <= 20 and int(bins.sum(dim=1).max()) <= 4
    assert bool(zero.any())
    assert torch.equal(SpecAugment(0, 0, 0, 0).train()(x), x)

"""Turn one sample plan into its stored form: an .mp4 (video + audio) and a .json (id + captions)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from harmonia.data.audio import normalize_peak, place, resample
from harmonia.data.media import encode_mp4
from harmonia.data.plan import SamplePlan
from harmonia.data.render import render_frames
from harmonia.data.spec import MediaSpec


@dataclass(frozen=True)
class ClipTask:
    """A plan with the source media it needs, so a worker process needs nothing else."""

    plan: SamplePlan
    glyph: np.ndarray  # [28, 28] uint8
    waveform: np.ndarray  # float32 mono
    waveform_rate: int
    spec: MediaSpec


def render_clip(task: ClipTask) -> tuple[str, bytes, bytes]:
    """(sample id, mp4 bytes, json bytes). The json carries only what training may see."""
    plan, spec = task.plan, task.spec
    video = render_frames(task.glyph, plan.trajectory, spec)
    wave = resample(task.waveform, task.waveform_rate, spec.sample_rate)
    audio = place(normalize_peak(wave, plan.audio_peak), spec.audio_samples, plan.audio_position)
    mp4 = encode_mp4(video, audio, spec)
    meta = json.dumps({"id": plan.id, "captions": list(plan.captions)}, sort_keys=True).encode()
    return plan.id, mp4, meta

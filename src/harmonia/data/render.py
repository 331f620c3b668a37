"""Video frames of one handwritten digit moving along a trajectory of a motion class."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harmonia.data.spec import MOTIONS, MediaSpec


@dataclass(frozen=True)
class Trajectory:
    """Digit centre (x, y in pixels) and size (pixels of the 28-px glyph box) at the first and last frame."""

    start: tuple[float, float]
    end: tuple[float, float]
    start_size: float
    end_size: float
    brightness: float

    def at(self, frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-frame centre x, centre y and glyph size (linear motion, geometric zoom)."""
        s = np.linspace(0.0, 1.0, frames) if frames > 1 else np.zeros(1)
        cx = self.start[0] + (self.end[0] - self.start[0]) * s
        cy = self.start[1] + (self.end[1] - self.start[1]) * s
        size = self.start_size * (self.end_size / self.start_size) ** s
        return cx, cy, size


def sample_trajectory(motion: str, spec: MediaSpec, rng: np.random.Generator) -> Trajectory:
    """A random trajectory of the motion class: random speed, start position, size and brightness."""
    if motion not in MOTIONS:
        raise ValueError(f"unknown motion {motion!r}; expected one of {', '.join(MOTIONS)}")
    w, h = spec.width, spec.height
    unit = 28.0 * min(w, h) / 64.0  # glyph box size at scale 1
    brightness = float(rng.uniform(0.6, 1.0))
    if motion.startswith("zoom"):
        small = unit * rng.uniform(0.45, 0.7)
        large = small * rng.uniform(1.8, 2.4)
        centre = (w / 2 + rng.uniform(-0.08, 0.08) * w, h / 2 + rng.uniform(-0.08, 0.08) * h)
        sizes = (small, large) if motion == "zoom-in" else (large, small)
        return Trajectory(centre, centre, float(sizes[0]), float(sizes[1]), brightness)
    size = unit * rng.uniform(0.8, 1.15)
    horizontal = motion in ("left", "right")
    along, across = (w, h) if horizontal else (h, w)
    margin = (
        0.35 * size
    )  # the glyph box has black borders: its centre may get this close to the edge
    travel = min(rng.uniform(0.3, 0.5) * along, along - 2 * margin)
    first = rng.uniform(margin, along - margin - travel)
    path = (first, first + travel) if motion in ("right", "down") else (first + travel, first)
    other = rng.uniform(0.35, 0.65) * across
    if horizontal:
        return Trajectory((path[0], other), (path[1], other), size, size, brightness)
    return Trajectory((other, path[0]), (other, path[1]), size, size, brightness)


def render_frames(glyph: np.ndarray, trajectory: Trajectory, spec: MediaSpec) -> np.ndarray:
    """uint8 RGB frames [T, H, W, 3]: the glyph (white on black) placed along the trajectory.

    Bilinear sampling with zeros outside the glyph is separable (no rotation), so each frame is
    rows @ glyph @ cols.T with per-frame interpolation matrices.
    """
    glyph = np.asarray(glyph, dtype=np.float32)
    cx, cy, size = trajectory.at(spec.frames)
    rows = _interpolation(spec.height, cy, size, glyph.shape[0])
    cols = _interpolation(spec.width, cx, size, glyph.shape[1])
    value = rows @ glyph @ cols.transpose(0, 2, 1)
    gray = np.clip(value * trajectory.brightness + 0.5, 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)


def _interpolation(out: int, centre: np.ndarray, size: np.ndarray, glyph: int) -> np.ndarray:
    """[T, out, glyph] linear-interpolation weights of glyph pixels for each output pixel centre."""
    pos = np.arange(out, dtype=np.float32) + 0.5
    src = (pos[None, :] - centre[:, None]) * (glyph / size[:, None]) + glyph / 2 - 0.5
    taps = np.arange(glyph, dtype=np.float32)
    weights = 1.0 - np.abs(src[:, :, None] - taps[None, None, :])
    return np.maximum(weights, 0.0).astype(np.float32)

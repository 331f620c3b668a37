"""Which front-end change made the CPU model learn the digit? Train + evaluate each variant.

Every variant is the shipped `demo` config (tiny, 1,000 steps of 32 clips) plus overrides, trained
on a clean AV-MNIST-T built with the default media spec, evaluated with `harmonia eval` on the
test split (the unseen speaker). The table in docs/model.md ("Front ends") was written from the
runs of this script; one seed per variant unless --seeds says more, so read differences below
~0.05 as noise.

    python benchmarks/front_end_ablation.py --work runs/ablation --seeds 0 1 2 --jobs 2
    python benchmarks/front_end_ablation.py --work runs/ablation --only final --seeds 0 1 2

Runs already finished in --work are reused; each run uses one thread (--jobs in parallel).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import mean, stdev

RAW_AUDIO = [
    "model.modalities.audio.features=raw",
    "model.modalities.audio.log_mel=null",
]
VARIANTS: dict[str, list[str]] = {
    # the shipped tiny size: per-frame conv stem on video, log-mel audio (8 kHz, 40 bands)
    "final": [],
    # VATT's linear voxel patches instead of the conv stem (the previous default's front end)
    "linear video patches": ["model.modalities.video.stem=null"],
    # the conv stem with VATT's raw waveform patches
    "raw waveform audio": RAW_AUDIO,
    # a conv stem on the log-mel frames as well
    "+ audio conv stem": [
        "model.modalities.audio.stem.channels=[16, 32]",
        "model.modalities.audio.stem.kernel=[3, 3]",
        "model.modalities.audio.stem.pool=[2, 2]",
    ],
    "+ audio DropToken 0.3": ["model.modalities.audio.drop_token=0.3"],
    "temperature 0.1": ["losses.temperature=0.1"],
    "+ SpecAugment (2x20 frames, 2x6 bands)": [
        "model.modalities.audio.log_mel.time_masks=2",
        "model.modalities.audio.log_mel.time_width=20",
        "model.modalities.audio.log_mel.freq_masks=2",
        "model.modalities.audio.log_mel.freq_width=6",
    ],
}
METRICS: dict[str, tuple[str, ...]] = {
    "zero-shot digit": ("zero_shot", "digit", "accuracy"),
    "audio->video R@1": ("retrieval", "audio->video", "class", "R@1"),
    "text->video R@1": ("retrieval", "text->video", "class", "R@1"),
    "probe video digit": ("linear_probe", "video/digit", "accuracy"),
    "probe audio digit": ("linear_probe", "audio/digit", "accuracy"),
    "held-out va loss": ("losses", "va", "loss"),
    "held-out vt loss": ("losses", "vt", "loss"),
}


def harmonia(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "harmonia", *args], check=True, env=env)


def run_one(work: Path, data: Path, name: str, seed: int) -> dict:
    run = work / f"{name.replace(' ', '_').replace('/', '-')}-s{seed}"
    if not (run / "eval.json").is_file():
        started = time.time()
        harmonia(
            "train", "demo", "--out", str(run), "--data", str(data), "--resume", "--no-progress",
            f"train.seed={seed}", *VARIANTS[name],
        )  # fmt: skip
        (run / "wall_s.txt").write_text(f"{time.time() - started:.0f}\n")
        harmonia("eval", str(run), "--workers", "0")
    result = json.loads((run / "eval.json").read_text())
    row = {}
    for label, path in METRICS.items():
        node = result
        for key in path:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        row[label] = node if isinstance(node, float) else None
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/ablation")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), default=None)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    work = Path(args.work)
    data = work / "data"
    if not (data / "summary.json").is_file():
        harmonia("data", "build", "--out", str(data), "--noise", "0", "--quiet")
    names = args.only or list(VARIANTS)
    jobs = [(n, s) for n in names for s in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda job: run_one(work, data, *job), jobs))
    by_variant: dict[str, list[dict]] = {}
    for (name, _), row in zip(jobs, rows, strict=True):
        by_variant.setdefault(name, []).append(row)
    print("| variant | seeds | " + " | ".join(METRICS) + " |")
    print("| --- | ---: |" + " ---: |" * len(METRICS))
    for name, runs in by_variant.items():
        cells = []
        for label in METRICS:
            values = [r[label] for r in runs if r[label] is not None]
            if not values:
                cells.append("n/a")
            elif len(values) == 1:
                cells.append(f"{values[0]:.3f}")
            else:
                cells.append(f"{mean(values):.3f} +- {stdev(values):.3f}")
        print(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

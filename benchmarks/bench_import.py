"""Import throughput: clips per second of `harmonia data import` on videos made here with PyAV.

    python benchmarks/bench_import.py [--videos 8] [--seconds 20] [--workers 2]

Writes ``--videos`` H.264 + AAC mp4 files of ``--seconds`` at 640x360, 30 fps, 44.1 kHz stereo
(a typical web clip), cuts one 2-second clip per second of each (the shipped models' clip: 8
frames of 32x32 at 4 fps, 8 kHz) and reports clips/s and source-video seconds per second.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from harmonia.data.import_inputs import Candidate
from harmonia.data.importer import ImportOptions, import_dataset
from harness import machine_line
from user_media import write_video


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = [
            write_video(root / f"v{n}.mp4", seconds=args.seconds, fps=30, size=(640, 360))
            for n in range(args.videos)
        ]
        clips = [
            Candidate(f"v{n}_{s:03d}", ("a caption",), path.name, path=path, start=float(s))
            for n, path in enumerate(paths)
            for s in range(args.seconds - 2)
        ]
        started = time.perf_counter()
        summary = import_dataset(
            iter(clips), root / "out", ImportOptions(), workers=args.workers, progress=False
        )
        seconds = time.perf_counter() - started
    done = summary["samples"]
    print(machine_line())
    print(
        f"{done} clips from {args.videos} videos of {args.seconds} s (640x360, 30 fps) with "
        f"{args.workers} workers: {seconds:.1f} s, {done / seconds:.1f} clips/s"
    )


if __name__ == "__main__":
    main()

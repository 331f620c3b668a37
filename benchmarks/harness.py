"""Helpers shared by the benchmark scripts: machine line, peak memory of a step, paired ratios.

Scripts in this folder run as ``python benchmarks/<name>.py``, so they import each other by
module name (this folder is first on ``sys.path``).

Peak memory on CPU is the growth of the process's resident set during one step: the kernel's
high-water mark (``VmHWM``) is reset to the current resident size by writing ``5`` to
``/proc/self/clear_refs`` right before the step, after the C heap has been trimmed, and read back
after it. It counts every allocation (PyTorch's CPU allocator is malloc), unlike ``tracemalloc``,
which sees only Python objects.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import math
import os
import platform
import statistics
from collections.abc import Callable, Mapping, Sequence

import torch


def cpu_name() -> str:
    """The CPU's model name (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line() -> str:
    """CPU model, visible cores, torch version and threads, for the head of every output."""
    return (
        f"{cpu_name()}, {os.cpu_count()} cores visible, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch thread(s), load average "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )


def status_kb(field: str) -> float:
    """A ``/proc/self/status`` field (``VmRSS``, ``VmHWM``, ...) in kB."""
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(field + ":"):
                return float(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def _trim_heap() -> None:
    gc.collect()
    name = ctypes.util.find_library("c")
    if name:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(name).malloc_trim(0)


def reset_peak() -> float | None:
    """Trim the C heap and reset the resident set's high-water mark to the current size; that
    size (kB), or None where Linux's ``/proc/self/clear_refs`` is unavailable."""
    try:
        _trim_heap()
        before = status_kb("VmRSS")
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")
    except OSError:
        return None
    return before


def peak_growth_mb(before: float | None) -> float:
    """MiB the resident set's high-water mark grew past ``before`` (`reset_peak`); NaN without."""
    return math.nan if before is None else (status_kb("VmHWM") - before) / 1024


def peak_rss_growth_mb(step: Callable[[], None]) -> float:
    """MiB the resident set grew to at its peak during ``step()``; NaN where Linux's
    ``/proc/self/clear_refs`` is unavailable."""
    before = reset_peak()
    step()
    return peak_growth_mb(before)


def paired_ratios(times: Mapping[str, Sequence[float]], baseline: str) -> dict[str, list[float]]:
    """Per repeat, baseline time / variant time (> 1: faster than the baseline), sorted."""
    return {
        name: sorted(b / s for b, s in zip(times[baseline], seconds, strict=True))
        for name, seconds in times.items()
    }


def ratio_cell(ratios: Sequence[float]) -> str:
    """Median ratio with its interquartile range, e.g. ``0.61x (0.57-0.70)``."""
    if len(ratios) < 2:
        return f"{statistics.median(ratios):.2f}x"
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    return f"{statistics.median(ratios):.2f}x ({q1:.2f}-{q3:.2f})"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table; columns after the first are right-aligned."""
    lines = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)

"""Training-curve figures for the audit report, built from RUN/metrics.jsonl records.

Figures are made with matplotlib's object API (no pyplot state) and rendered to PNG bytes by the
Agg canvas, so the report works headless. Each builder returns None when the run did not log what
it needs.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

HIST_PREFIX = "hist/"
HIST_RANGE = (-1.0, 1.0)
Record = dict[str, Any]
LINE_STYLES = ("-", "--", ":", "-.")
TOTAL_LOSS = "loss/total"


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    """Render a figure to PNG bytes with the Agg canvas."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def plain_label(text: str) -> str:
    """``text`` (a metric name from the run) as matplotlib shows it literally: ``$`` escaped,
    so no ``$...$`` in it is parsed as mathtext (which fails on malformed formulas)."""
    return text.replace("$", r"\$")


def keys_with_prefix(records: Sequence[Record], prefix: str, suffix: str = "") -> list[str]:
    """Sorted metric names starting with `prefix` (and ending with `suffix`) that any record holds."""
    found = {k for r in records for k in r if k.startswith(prefix) and k.endswith(suffix)}
    return sorted(found)


def series(records: Sequence[Record], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a scalar metric, skipping records without a finite value for it."""
    steps, values = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v):
            steps.append(float(r["step"]))
            values.append(float(v))
    return np.asarray(steps), np.asarray(values)


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or values.size < window:
        return values
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


def _plot_lines(ax: Axes, records: Sequence[Record], keys: Sequence[str], label_of: Any) -> int:
    drawn = 0
    for key in keys:
        x, y = series(records, key)
        if x.size == 0:
            continue
        window = max(1, x.size // 25)
        style = LINE_STYLES[drawn % len(LINE_STYLES)]  # overlapping series stay distinguishable
        (line,) = ax.plot(x, y, alpha=0.25 if window > 1 else 1.0, linewidth=1, linestyle=style)
        label = plain_label(label_of(key))
        if window > 1:
            smooth = _smooth(y, window)
            ax.plot(x, smooth, color=line.get_color(), linewidth=2, linestyle=style, label=label)
        else:
            line.set_label(label)
            line.set_linewidth(1.8)
        drawn += 1
    if drawn:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        ax.set_xlabel("step")
    return drawn


def _scalar_figure(
    records: Sequence[Record],
    prefix: str,
    title: str,
    ylabel: str,
    size: tuple[float, float],
    skip: tuple[str, ...] = (),
) -> Figure | None:
    keys = [k for k in keys_with_prefix(records, prefix) if k not in skip]
    if not keys:
        return None
    fig = Figure(figsize=size)
    ax = fig.add_subplot()
    if not _plot_lines(ax, records, keys, lambda k: k.removeprefix(prefix)):
        return None
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return fig


def loss_figure(records: Sequence[Record]) -> Figure | None:
    """Each logged loss over training (thin: raw; thick: running mean).

    The total is left out when the individual losses are there: it is their sum, and its scale
    would flatten them.
    """
    separate = [k for k in keys_with_prefix(records, "loss/") if k != TOTAL_LOSS]
    skip = (TOTAL_LOSS,) if separate else ()
    return _scalar_figure(records, "loss/", "Contrastive losses", "loss", (6.0, 4.6), skip)


def conflict_figure(records: Sequence[Record]) -> Figure | None:
    """Per loss pair: fraction of samples with conflicting gradients, and mean gradient cosine."""
    frac = keys_with_prefix(records, "conflict/", "/fraction")
    cos = keys_with_prefix(records, "conflict/", "/mean_cos")
    if not frac and not cos:
        return None
    fig = Figure(figsize=(6.0, 4.6))
    top, bottom = fig.subplots(2, 1, sharex=True)

    def pair(key: str) -> str:
        return key.split("/")[1]

    _plot_lines(top, records, frac, pair)
    top.set_ylabel("conflicting fraction")
    top.set_ylim(-0.02, 1.02)
    top.set_title("Gradient conflict between losses (cos < 0)")
    _plot_lines(bottom, records, cos, pair)
    bottom.axhline(0.0, color="k", linewidth=0.8, linestyle=":")
    bottom.set_ylabel("mean cosine")
    fig.tight_layout()
    return fig


def cosine_heatmap_figure(records: Sequence[Record]) -> Figure | None:
    """Per-sample gradient-cosine distribution by step (the logged 40-bin histograms), per pair.

    Each column is one logged step, normalized to sum to 1, so the colour is the share of the
    batch whose cosine fell in that bin; the dashed line marks cos = 0 (conflict below it).
    """
    keys = [k for k in keys_with_prefix(records, HIST_PREFIX) if _hist_rows(records, k)[0].size]
    if not keys:
        return None
    fig = Figure(figsize=(6.2, 2.9 * len(keys)))
    axes = fig.subplots(len(keys), 1, squeeze=False)[:, 0]
    for ax, key in zip(axes, keys, strict=True):
        steps, counts = _hist_rows(records, key)
        totals = counts.sum(axis=1, keepdims=True)
        share = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
        edges_y = np.linspace(*HIST_RANGE, counts.shape[1] + 1)
        edges_x = _step_edges(steps)
        mesh = ax.pcolormesh(edges_x, edges_y, share.T, cmap="magma", shading="flat")
        ax.axhline(0.0, color="w", linewidth=1, linestyle="--")
        centres = (edges_y[:-1] + edges_y[1:]) / 2
        mean = np.divide(
            (share * centres).sum(axis=1),
            share.sum(axis=1),
            out=np.full(len(steps), np.nan),
            where=share.sum(axis=1) > 0,
        )
        ax.plot(steps, mean, color="cyan", linewidth=1.2, label="mean")
        ax.set_ylabel("gradient cosine")
        pair = plain_label(key.removeprefix(HIST_PREFIX))
        ax.set_title(f"Cosine distribution over training: {pair}")
        ax.legend(fontsize=8, loc="lower right")
        fig.colorbar(mesh, ax=ax, label="share of batch")
    axes[-1].set_xlabel("step")
    fig.tight_layout()
    return fig


def _hist_rows(records: Sequence[Record], key: str) -> tuple[np.ndarray, np.ndarray]:
    steps, rows = [], []
    width = None
    for r in records:
        h = r.get(key)
        if not isinstance(h, list) or not h:
            continue
        if width is None:
            width = len(h)
        if len(h) != width:
            continue
        steps.append(float(r["step"]))
        rows.append([float(c) for c in h])
    if not rows:
        return np.zeros(0), np.zeros((0, 0))
    return np.asarray(steps), np.asarray(rows)


def _step_edges(steps: np.ndarray) -> np.ndarray:
    if steps.size == 1:
        return np.array([steps[0] - 0.5, steps[0] + 0.5])
    mids = (steps[:-1] + steps[1:]) / 2
    return np.concatenate([[2 * steps[0] - mids[0]], mids, [2 * steps[-1] - mids[-1]]])


def curriculum_figure(records: Sequence[Record]) -> Figure | None:
    """The curriculum's kept fraction (and any other logged curriculum scalar) over training."""
    title = "Curriculum: share of each batch kept for the anchor encoder"
    return _scalar_figure(records, "curriculum/", title, "value", (6.2, 3.0))


def score_histogram_figure(
    scores: Sequence[float], flags: Sequence[bool | None], cut: float | None = None
) -> Figure | None:
    """Final ledger scores, split by ground truth when known (misaligned vs clean)."""
    if not scores:
        return None
    s = np.asarray(scores, dtype=float)
    bins = np.linspace(min(-1.0, s.min()), max(1.0, s.max()), 41).tolist()
    fig = Figure(figsize=(6.2, 3.0))
    ax = fig.add_subplot()
    known = [f is not None for f in flags]
    if any(known):
        noisy = np.array([f is True for f in flags])
        clean = np.array([f is False for f in flags])
        ax.hist(s[clean], bins=bins, alpha=0.6, label=f"clean ({clean.sum()})", color="tab:blue")
        ax.hist(
            s[noisy], bins=bins, alpha=0.6, label=f"misaligned ({noisy.sum()})", color="tab:red"
        )
        ax.legend(fontsize=8)
    else:
        ax.hist(s, bins=bins, color="tab:gray")
    if cut is not None:
        ax.axvline(cut, color="k", linestyle=":", linewidth=1)
    ax.set_xlabel("ledger score (EMA gradient cosine; low = suspect)")
    ax.set_ylabel("samples")
    ax.set_title("Per-sample conflict scores at the end of training")
    ax.grid(alpha=0.3)
    return fig

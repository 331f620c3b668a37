"""The study's plots (matplotlib, Agg): conflict-score distributions and metric vs noise rate."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from harmonia.experiments.analysis import METRICS, Result, Stat, metric_value, select
from harmonia.experiments.plan import VARIANT_LABELS, Budget

GROUP_STYLE: dict[str, tuple[str, str]] = {
    "clean": ("clean", "tab:blue"),
    "text": ("caption misaligned", "tab:orange"),
    "audio": ("audio misaligned", "tab:green"),
    "both": ("caption + audio misaligned", "tab:red"),
}


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def conflict_distributions(results: Sequence[Result], budget: Budget, out: Path) -> Path | None:
    """Final ledger scores of clean vs misaligned training triplets, per noise rate and variant.

    Each run's ledger holds its own score (the paper's conflict cosine for +CL and +GR+CL, the
    online loss score for +CL (loss score), gradient_norm otherwise).
    """
    noisy = [n for n in budget.noise_rates if n > 0]
    if not noisy:
        return None
    plt = _pyplot()
    variants = list(VARIANT_LABELS)
    fig, axes = plt.subplots(
        len(noisy), len(variants), figsize=(3.2 * len(variants), 2.6 * len(noisy)), squeeze=False
    )
    bins = [i / 20 - 1 for i in range(41)]
    for row, noise in enumerate(noisy):
        for col, variant in enumerate(variants):
            ax = axes[row][col]
            runs = select(results, study="ablation", variant=variant, noise=noise)
            for group, (label, color) in GROUP_STYLE.items():
                scores = [s for r in runs for s in r.get("ledger", {}).get(group, [])]
                if scores:
                    ax.hist(
                        scores,
                        bins=bins,
                        density=True,
                        histtype="step",
                        lw=1.5,
                        color=color,
                        label=f"{label} ({len(scores)})",
                    )
            ax.axvline(0.0, color="grey", ls="--", lw=0.8)
            ax.set_title(f"{VARIANT_LABELS[variant]}, {noise:.0%} misaligned", fontsize=9)
            ax.set_xlim(-1, 1)
            if row == len(noisy) - 1:
                ax.set_xlabel("final ledger score (the run's score)")
            if col == 0:
                ax.set_ylabel("density")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6, loc="upper left")
    fig.suptitle("Final ledger scores of training triplets, all seeds pooled (low = suspected)")
    fig.tight_layout()
    path = out / "conflict_scores.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def metric_vs_noise(results: Sequence[Result], budget: Budget, out: Path) -> Path:
    """Each downstream metric vs the misalignment rate, one line per variant (mean +- seed std)."""
    plt = _pyplot()
    metrics = list(METRICS)
    cols = 4
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.8 * rows), squeeze=False)
    for i, metric in enumerate(metrics):
        ax = axes[i // cols][i % cols]
        middle = (len(VARIANT_LABELS) - 1) / 2
        for j, (variant, label) in enumerate(VARIANT_LABELS.items()):
            xs, ys, es = [], [], []
            for noise in budget.noise_rates:
                runs = select(results, study="ablation", variant=variant, noise=noise)
                stat = Stat.of(metric_value(r, metric) for r in runs)
                if stat is not None:
                    xs.append(100 * noise + (j - middle) * 0.6)
                    ys.append(100 * stat.mean)
                    es.append(100 * stat.std)
            if xs:
                ax.errorbar(xs, ys, yerr=es, marker="o", ms=3, capsize=2, label=label)
        ax.set_title(metric.label, fontsize=9)
        ax.set_xlabel("misaligned training triplets (%)")
        ax.set_ylabel("%")
        ax.set_xticks([100 * n for n in budget.noise_rates])
    for k in range(len(metrics), rows * cols):
        axes[k // cols][k % cols].axis("off")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Downstream metrics vs noise rate (mean +- std over {budget.seeds} seed(s))")
    fig.tight_layout()
    path = out / "metric_vs_noise.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

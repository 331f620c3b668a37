"""Turn an evaluation result (the eval.json mapping) into readable rows and a printed table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _pct(value: Any) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{100 * value:.1f}"


def _num(value: Any, digits: int = 3) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{value:.{digits}f}"


def headline_rows(result: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(metric, formatted value) pairs for the numbers people compare first."""
    rows: list[tuple[str, str]] = []
    for task, res in result.get("zero_shot", {}).items():
        rows.append((f"zero-shot {task} accuracy (%)", _pct(res.get("accuracy"))))
    for direction, by_relevance in result.get("retrieval", {}).items():
        for kind, res in by_relevance.items():
            rows.append((f"{direction} R@1 ({kind}) (%)", _pct(res.get("R@1"))))
    for probe, res in result.get("linear_probe", {}).items():
        rows.append((f"linear probe {probe} accuracy (%)", _pct(res.get("accuracy"))))
    for score, by_target in result.get("noise_detection", {}).items():
        for target, res in by_target.items():
            if isinstance(res, Mapping):
                rows.append((f"noise detection {score} vs {target} AUROC", _num(res.get("auroc"))))
    return rows


def _block(title: str, columns: list[tuple[str, int]], rows: list[list[Any]]) -> list[str]:
    """A titled text table; a negative column width means left-aligned."""
    if not rows:
        return []

    def line(cells: list[Any]) -> str:
        return "  " + "".join(
            f"{c!s:<{-w}}" if w < 0 else f"{c!s:>{w}}"
            for c, (_, w) in zip(cells, columns, strict=True)
        )

    return ["", title, line([name for name, _ in columns]), *(line(r) for r in rows)]


def format_table(result: Mapping[str, Any]) -> str:
    """A plain-text report of every section of an evaluation result."""
    excluded = result.get("n_excluded")
    lines = [
        f"evaluation of {result.get('run', '?')} on split '{result.get('split', '?')}' "
        f"of {result.get('dataset', '?')} ({result.get('n_samples', '?')} samples"
        + (f", {excluded} misaligned excluded)" if excluded else ")")
    ]
    lines += _block(
        "zero-shot classification (CLIP-style prompts)",
        [("task", -28), ("acc %", 8), ("chance %", 10), ("n", 7)],
        [
            [task, _pct(r.get("accuracy")), _pct(r.get("chance")), r.get("n", "-")]
            for task, r in result.get("zero_shot", {}).items()
        ],
    )
    lines += _block(
        "retrieval (R@K in %, MdR = median rank)",
        [
            ("direction", -16),
            ("relevance", -20),
            ("R@1", 7),
            ("R@5", 7),
            ("R@10", 7),
            ("MdR", 7),
            ("queries", 9),
            ("gallery", 9),
        ],
        [
            [
                direction,
                r.get("relevance", "?"),
                _pct(r.get("R@1")),
                _pct(r.get("R@5")),
                _pct(r.get("R@10")),
                _num(r.get("median_rank"), 1),
                r.get("n_queries", "-"),
                r.get("n_gallery", "-"),
            ]
            for direction, by_relevance in result.get("retrieval", {}).items()
            for r in by_relevance.values()
        ],
    )
    lines += _block(
        "held-out losses (random blocks of clips; chance = ln(block))",
        [("loss (space)", -16), ("loss", 8), ("chance", 8), ("block", 7)],
        [
            [space, _num(r.get("loss")), _num(r.get("chance")), r.get("block", "-")]
            for space, r in result.get("losses", {}).items()
        ],
    )
    lines += _block(
        "linear probe (logistic regression on frozen pooled features)",
        [("features/label", -28), ("acc %", 8), ("chance %", 10), ("train", 7), ("eval", 7)],
        [
            [
                probe,
                _pct(r.get("accuracy")),
                _pct(r.get("chance")),
                r.get("n_train", "-"),
                r.get("n_eval", "-"),
            ]
            for probe, r in result.get("linear_probe", {}).items()
        ],
    )
    lines += _block(
        "noise detection on the training split (ground truth: index flags)",
        [
            ("score", -18),
            ("flags", -8),
            ("AUROC", 7),
            ("AP", 7),
            ("random AP", 11),
            ("n", 7),
            ("noisy", 7),
        ],
        [
            [
                score,
                target,
                _num(r.get("auroc")),
                _num(r.get("average_precision")),
                _num(r.get("prevalence")),
                r.get("n", "-"),
                r.get("n_noisy", "-"),
            ]
            for score, by_target in result.get("noise_detection", {}).items()
            for target, r in by_target.items()
            if isinstance(r, Mapping)
        ],
    )
    lines += _skipped_block(result.get("skipped_metrics"))
    lines += [f"note: {note}" for note in result.get("notes", [])]
    return "\n".join(lines)


def _skipped_block(skipped: Any) -> list[str]:
    """The metrics that did not run, grouped by reason, then by section ('zero_shot: digit')."""
    if not isinstance(skipped, Mapping) or not skipped:
        return []
    by_reason: dict[str, dict[str, list[str]]] = {}
    for metric, reason in skipped.items():
        section, _, name = str(metric).partition("/")
        by_reason.setdefault(str(reason), {}).setdefault(section, []).append(name or "all")
    lines = ["", "skipped metrics (not computed)"]
    for reason, sections in by_reason.items():
        lines.append(f"  {reason}:")
        lines += [f"    {section}: {', '.join(names)}" for section, names in sections.items()]
    return lines

"""Numbers of the study from run results: metrics per run, mean +- std over seeds, paired deltas.

Only numbers: what they mean (helps / hurts, which claims hold) is `verdicts`, and the page
that shows both is `report`.

A difference to the baseline is paired by seed (same seed = same initialization and, for the
plain shuffle, the same batch order), so its std measures how consistent the effect is; the
effect size is the mean difference in units of the seed std (the pooled std of the two arms).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Result = Mapping[str, Any]


@dataclass(frozen=True)
class Metric:
    """A downstream number read from a run's evaluation (a fraction in [0, 1])."""

    key: str
    label: str
    read: Callable[[Mapping[str, Any]], float | None]


def _path(*keys: str) -> Callable[[Mapping[str, Any]], float | None]:
    def read(data: Mapping[str, Any]) -> float | None:
        node: Any = data
        for key in keys:
            if not isinstance(node, Mapping) or key not in node:
                return None
            node = node[key]
        return None if node is None else float(node)

    return read


def _probe(role: str, task: str) -> Callable[[Mapping[str, Any]], float | None]:
    def read(data: Mapping[str, Any]) -> float | None:
        modality = data.get("roles", {}).get(role, role)
        return _path("linear_probe", f"{modality}/{task}", "accuracy")(data)

    return read


METRICS: tuple[Metric, ...] = (
    Metric("zs_digit", "zero-shot digit", _path("zero_shot", "digit", "accuracy")),
    Metric("zs_motion", "zero-shot motion", _path("zero_shot", "motion", "accuracy")),
    Metric("t2v", "text->video R@1", _path("retrieval", "text->video", "class", "R@1")),
    Metric("a2v", "audio->video R@1", _path("retrieval", "audio->video", "class", "R@1")),
    Metric("probe_vd", "probe video/digit", _probe("video", "digit")),
    Metric("probe_vm", "probe video/motion", _probe("video", "motion")),
    Metric("probe_ad", "probe audio/digit", _probe("audio", "digit")),
    Metric("auroc", "ledger AUROC", _path("noise_detection", "ledger", "any", "auroc")),
)
"""The study's metrics: R@1 is class-level (a caption's digit+motion; audio's digit)."""

INSTANCE_METRICS: tuple[Metric, ...] = (
    Metric(
        "t2v_inst",
        "text->video R@1 (instance)",
        _path("retrieval", "text->video", "instance", "R@1"),
    ),
    Metric(
        "a2v_inst",
        "audio->video R@1 (instance)",
        _path("retrieval", "audio->video", "instance", "R@1"),
    ),
)


def metric(key: str) -> Metric:
    """The metric (of `METRICS` or `INSTANCE_METRICS`) with this key."""
    return next(m for m in (*METRICS, *INSTANCE_METRICS) if m.key == key)


def metric_value(result: Result, metric: Metric) -> float | None:
    value = metric.read(result.get("eval", {}))
    return None if value is None or math.isnan(value) else value


def detection(result: Result, score: str, target: str, what: str = "auroc") -> float | None:
    """AUROC/AP of a noise score against a target flag (`any`, `text`, `audio`)."""
    block = result.get("eval", {}).get("noise_detection", {})
    key = score if score == "ledger" else f"{score}/{target}"
    value = block.get(key, {}).get(target, {}).get(what)
    return None if value is None else float(value)


REPLAYED_TARGETS = {"text": "caption", "audio": "audio"}
"""Evaluation's flag names -> the trace replay's target names."""


def score_detection(result: Result, score: str, target: str, what: str = "auroc") -> float | None:
    """AUROC (or ``what``) of a noise score against a target flag (`text` or `audio`).

    ``score`` is a ledger score replayed from the run's trace (`conflict`, `gradient_norm`,
    `loss`) or a final-model score of the evaluation (`pair_cos`, `el2n`, on the pair whose
    partner the target flags).
    """
    replayed = result.get("ledger_scores", {})
    if score in replayed:
        value = replayed[score].get(REPLAYED_TARGETS[target], {}).get(what)
        return None if value is None else float(value)
    return detection(result, score, target, what)


@dataclass(frozen=True)
class Stat:
    """Mean and sample std (ddof=1; 0 for one value) of n values."""

    mean: float
    std: float
    n: int

    @staticmethod
    def of(values: Iterable[float | None]) -> Stat | None:
        xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
        if not xs:
            return None
        mean = sum(xs) / len(xs)
        var = sum((x - mean) ** 2 for x in xs) / (len(xs) - 1) if len(xs) > 1 else 0.0
        return Stat(mean, math.sqrt(var), len(xs))


@dataclass(frozen=True)
class Delta:
    """Paired difference (variant - reference) over seeds present in both arms."""

    diff: Stat
    reference: Stat
    variant: Stat
    wins: int
    """Seeds where the variant is strictly better."""

    @property
    def effect(self) -> float | None:
        """Mean difference in units of the pooled seed std of the two arms (None if that is 0)."""
        pooled = math.sqrt((self.reference.std**2 + self.variant.std**2) / 2)
        return None if pooled == 0 else self.diff.mean / pooled


def select(results: Iterable[Result], **spec: Any) -> list[Result]:
    """Results whose spec has every given field value (successful runs only)."""
    out = []
    for r in results:
        if "error" in r or "spec" not in r:
            continue
        if all(r["spec"].get(k) == v for k, v in spec.items()):
            out.append(r)
    return out


def ablation(results: Iterable[Result], variant: str, noise: float, **extra: Any) -> list[Result]:
    """The ablation study's runs of one cell (variant, noise rate), every seed."""
    return select(results, study="ablation", variant=variant, noise=noise, **extra)


def scaling(results: Iterable[Result], variant: str) -> list[Result]:
    """The scaling study's runs (clean + extra source) of one variant, every seed."""
    return select(results, study="scaling", variant=variant)


def noisy(rates: Iterable[float]) -> tuple[float, ...]:
    """The noise rates with misaligned training triplets (so something to detect)."""
    return tuple(n for n in rates if n > 0)


def by_seed(results: Iterable[Result], read: Callable[[Result], float | None]) -> dict[int, float]:
    out: dict[int, float] = {}
    for r in results:
        value = read(r)
        if value is not None and not math.isnan(value):
            out[int(r["spec"]["seed"])] = value
    return out


def paired(
    reference: Sequence[Result], variant: Sequence[Result], read: Callable[[Result], float | None]
) -> Delta | None:
    """variant - reference, paired by seed."""
    ref, var = by_seed(reference, read), by_seed(variant, read)
    seeds = sorted(set(ref) & set(var))
    if not seeds:
        return None
    diff = Stat.of(var[s] - ref[s] for s in seeds)
    ref_stat, var_stat = Stat.of(ref[s] for s in seeds), Stat.of(var[s] for s in seeds)
    assert diff is not None and ref_stat is not None and var_stat is not None
    wins = sum(var[s] > ref[s] for s in seeds)
    return Delta(diff, ref_stat, var_stat, wins)


def reader(metric: Metric) -> Callable[[Result], float | None]:
    return lambda r: metric_value(r, metric)


def mean_conflict_fraction(result: Result) -> float | None:
    """Fraction of triplets whose two gradients conflict, averaged over the logged steps."""
    values = [v for pair in result.get("conflict", {}).values() for v in pair.get("fraction", [])]
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else None


def ledger_means(result: Result) -> dict[str, float]:
    """Mean final ledger score of each ground-truth group that has samples."""
    return {
        group: sum(scores) / len(scores)
        for group, scores in result.get("ledger", {}).items()
        if scores
    }


def metric_stat(runs: Iterable[Result], metric: Metric) -> Stat | None:
    """Mean and std over the runs (seeds) of one metric."""
    return Stat.of(metric_value(r, metric) for r in runs)


def conflict_share(runs: Iterable[Result]) -> Stat | None:
    """Mean and std over the runs of their share of conflicting triplets."""
    return Stat.of(mean_conflict_fraction(r) for r in runs)


def detection_stat(
    runs: Iterable[Result], score: str, target: str, what: str = "auroc"
) -> Stat | None:
    """Mean and std over the runs of `score_detection` (how well a score finds `target`)."""
    return Stat.of(score_detection(r, score, target, what) for r in runs)

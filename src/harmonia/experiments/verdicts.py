"""The study's verdicts: which differences are clear effects, which claims hold, what to advise.

Pure judging, no Markdown: `judge_study` takes the study's run results (read through
`analysis`, which only computes numbers) and returns typed verdict objects; `report` turns them
into docs/RESULTS.md. Every threshold behind a conclusion of the study is a constant here.

The verdict rule: a paired difference (variant - reference, by seed) *helps* or *hurts* only
when its effect size |d| (mean difference / pooled seed std of the two arms) is at least
`EFFECT_THRESHOLD` and every seed agrees on the direction; otherwise there is *no clear effect*.
A claim over several cells (noise rate x headline metric) holds where it helps in some cell and
hurts in none.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from harmonia.experiments.analysis import (
    Delta,
    Metric,
    Result,
    Stat,
    ablation,
    conflict_share,
    detection_stat,
    metric,
    noisy,
    paired,
    reader,
    scaling,
)
from harmonia.experiments.plan import ALTERNATIVES, PAPER_VARIANTS, Budget
from harmonia.training.health import LossHealth, judge

EFFECT_THRESHOLD = 1.0
"""Smallest |d| (mean paired difference in units of the pooled seed std) of a clear effect."""

MIN_SEEDS = 2
"""Seeds a paired difference needs for a verdict: with one there is no seed std to measure the
effect against."""

FRAGILE_BELOW_SEEDS = 3
"""A study with fewer seeds than this has only fragile verdicts (one seed flips a verdict)."""

CONFLICT_SPECIFICITY = 0.5
"""Conflicts are *not* specific to misalignment when the share of conflicting triplets on clean
data is above this fraction of the share at the noisiest rate (baseline runs)."""

HEADLINE = ("zs_digit", "t2v", "a2v", "probe_vd")
"""Metrics the claims are judged on (downstream retrieval and classification)."""

DETECTION_SCORES = ("conflict", "gradient_norm", "loss", "pair_cos", "el2n")
"""The per-triplet noise scores compared (`analysis.score_detection` names), the paper's first."""

PAPER_SCORE = "conflict"
"""The paper's score among `DETECTION_SCORES`: the gradient-conflict cosine."""

DETECTION_TARGETS = ("text", "audio")
"""What the noise scores should find: caption-misaligned and audio-misaligned triplets."""

HARMONIZED = "gr+cl"
"""The paper's full method (realignment and curriculum), compared with each alternative."""

Effect = Literal["helps", "hurts", "no clear effect", "too few seeds", "no runs"]
"""The verdict on one paired difference."""

EFFECTS: tuple[Effect, ...] = ("helps", "hurts", "no clear effect", "too few seeds", "no runs")

UNTESTED: tuple[Effect, ...] = ("too few seeds", "no runs")
"""Verdicts that say the difference could not be judged."""

Outcome = Literal["helps", "hurts", "mixed", "no clear effect", "not tested"]
"""The verdict over several cells (for a claim: helps = the claim holds)."""


def verdict(delta: Delta | None, threshold: float = EFFECT_THRESHOLD) -> Effect:
    """'helps' / 'hurts' when every seed agrees and |effect| >= threshold, else 'no clear effect'.

    Needs at least `MIN_SEEDS` seeds; with one there is no seed std to measure an effect against.
    """
    if delta is None:
        return "no runs"
    if delta.diff.n < MIN_SEEDS:
        return "too few seeds"
    n, effect = delta.diff.n, delta.effect
    if effect is None:  # both arms constant over seeds
        effect = math.copysign(math.inf, delta.diff.mean) if delta.diff.mean else 0.0
    if effect >= threshold and delta.wins == n:
        return "helps"
    if effect <= -threshold and delta.wins == 0:
        return "hurts"
    return "no clear effect"


@dataclass(frozen=True)
class Cell:
    """One paired comparison on one metric (at one noise rate), with its verdict."""

    metric: Metric
    noise: float | None
    """The ablation's noise rate; None for the scaling study (clean vs clean + extra)."""
    delta: Delta | None
    """variant - reference, paired by seed; None where no seed has both runs."""

    @property
    def verdict(self) -> Effect:
        return verdict(self.delta)

    @property
    def effect_size(self) -> float | None:
        """d: the mean difference in units of the pooled seed std (None: no runs, or std 0)."""
        return None if self.delta is None else self.delta.effect

    @property
    def direction(self) -> Literal["better", "worse", "same"] | None:
        """Sign of the mean difference: is the variant better than the reference on average?"""
        if self.delta is None:
            return None
        mean = self.delta.diff.mean
        return "better" if mean > 0 else "worse" if mean < 0 else "same"


@dataclass(frozen=True)
class Tally:
    """How many cells got each verdict, and the verdict over all of them."""

    counts: Mapping[Effect, int]

    @staticmethod
    def of(cells: Iterable[Cell]) -> Tally:
        counts = dict.fromkeys(EFFECTS, 0)
        for cell in cells:
            counts[cell.verdict] += 1
        return Tally(counts)

    def __getitem__(self, effect: Effect) -> int:
        return self.counts[effect]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def outcome(self) -> Outcome:
        """Helps (a claim holds) only where it helps in some cell and hurts in none."""
        helps, hurts = self["helps"], self["hurts"]
        if sum(self[e] for e in UNTESTED) == self.total:
            return "not tested"
        if helps and not hurts:
            return "helps"
        if hurts and not helps:
            return "hurts"
        if helps and hurts:
            return "mixed"
        return "no clear effect"


@dataclass(frozen=True)
class Comparison:
    """`variant` against `reference` on the headline metrics, cell by cell."""

    variant: str
    reference: str
    """The two arms (variant names of the plan; for the scaling study, with the data)."""
    cells: tuple[Cell, ...]

    def at(self, noise: float | None) -> tuple[Cell, ...]:
        """The cells of one noise rate, in `HEADLINE` order."""
        return tuple(c for c in self.cells if c.noise == noise)

    @property
    def tally(self) -> Tally:
        return Tally.of(self.cells)

    @property
    def outcome(self) -> Outcome:
        return self.tally.outcome


Arms = dict[float | None, tuple[Sequence[Result], Sequence[Result]]]
"""(reference runs, variant runs) by noise rate (None: the scaling study)."""


def compare(variant: str, reference: str, arms: Arms) -> Comparison:
    """`variant` - `reference` on each headline metric, paired by seed."""
    cells = tuple(
        Cell(metric(key), noise, paired(ref, var, reader(metric(key))))
        for noise, (ref, var) in arms.items()
        for key in HEADLINE
    )
    return Comparison(variant, reference, cells)


@dataclass(frozen=True)
class ConflictShare:
    """Claim (1) at one noise rate: how common conflicts are in the baseline runs."""

    noise: float
    fraction: Stat | None
    """Share of conflicting triplets, mean over training."""
    detection: tuple[Stat | None, Stat | None] | None
    """AUROC of the conflict score for caption- and audio-misaligned triplets (None: clean)."""


@dataclass(frozen=True)
class ConflictsClaim:
    """Claim (1), conflicts are common: the share at each noise rate."""

    shares: tuple[ConflictShare, ...]

    @property
    def measured(self) -> bool:
        """Every noise rate has a share (so the claim can be stated)."""
        return all(s.fraction is not None for s in self.shares)

    @property
    def auroc_range(self) -> tuple[float, float] | None:
        """Smallest and largest mean AUROC of the conflict score over rates and targets."""
        aurocs = [
            stat.mean
            for s in self.shares
            if s.detection is not None
            for stat in s.detection
            if stat is not None
        ]
        return (min(aurocs), max(aurocs)) if aurocs else None


@dataclass(frozen=True)
class ScalingClaim:
    """Claim (4): a noisier extra source helps only with harmonization."""

    comparisons: Mapping[str, Comparison]
    """Clean + extra vs clean, for the baseline and for `HARMONIZED` (in that order)."""

    @property
    def holds(self) -> bool:
        """The extra source helps with harmonization (hurting nowhere) and never without it."""
        harmonized, plain = self.comparisons[HARMONIZED].tally, self.comparisons["baseline"].tally
        return bool(harmonized["helps"] and not harmonized["hurts"] and not plain["helps"])


@dataclass(frozen=True)
class ConflictOrigin:
    """Do conflicts come from misalignment? Baseline conflict shares, clean vs noisiest."""

    clean: Stat
    noisiest: Stat
    noisiest_rate: float

    @property
    def specific(self) -> bool:
        """Conflicts track misalignment (clean data conflicts much less than the noisiest)."""
        return not self.clean.mean > CONFLICT_SPECIFICITY * self.noisiest.mean


@dataclass(frozen=True)
class DetectionFinding:
    """At one noise rate and target: the paper's conflict score vs the best other score."""

    noise: float
    target: str
    paper: Stat
    best: Stat
    best_score: str
    """`DETECTION_SCORES` name of the best other score (highest mean AUROC)."""


@dataclass(frozen=True)
class LossNote:
    """Did one loss learn (all ablation runs)? Its final losses and `health.judge`'s verdict."""

    health: LossHealth
    final: Stat
    """Training loss at the end, over runs."""
    held_out: Stat | None
    """Held-out (validation) loss at the end, over runs."""

    @property
    def train_below_chance(self) -> float:
        """How far the training loss is below its chance level, as a fraction of it."""
        return 1 - self.health.train / self.health.train_chance

    @property
    def held_out_below_chance(self) -> float | None:
        if self.health.held_out is None:
            return None
        return 1 - self.health.held_out / self.health.held_out_chance


@dataclass(frozen=True)
class Advice:
    """For a user deciding whether to turn harmonization on."""

    helpful: tuple[str, ...]
    """The paper's arms whose claim holds (helps somewhere, hurts nowhere)."""
    instead: tuple[str, ...]
    """The alternatives that help somewhere and hurt nowhere."""


@dataclass(frozen=True)
class StudyVerdicts:
    """Every verdict of the study, for the page to show."""

    conflicts: ConflictsClaim
    versus_baseline: Mapping[str, Comparison]
    """Each of `PAPER_VARIANTS` and `ALTERNATIVES` vs the baseline, at every noise rate."""
    harmonized_versus: Mapping[str, Comparison]
    """`HARMONIZED` vs each of `ALTERNATIVES`, at every noise rate."""
    scaling: ScalingClaim
    origin: ConflictOrigin | None
    detection: tuple[DetectionFinding, ...]
    learning: tuple[LossNote, ...]
    fragile: bool
    """Too few seeds (`FRAGILE_BELOW_SEEDS`) for any verdict to be robust."""

    @property
    def advice(self) -> Advice:
        return Advice(
            tuple(v for v in PAPER_VARIANTS if self.versus_baseline[v].outcome == "helps"),
            tuple(v for v in ALTERNATIVES if self.versus_baseline[v].outcome == "helps"),
        )

    @property
    def not_learned(self) -> tuple[str, ...]:
        """Losses that did not learn anything that transfers."""
        return tuple(n.health.name for n in self.learning if not n.health.learned)


def judge_study(budget: Budget, results: Sequence[Result]) -> StudyVerdicts:
    """The verdicts of the study of `budget` from its results (failed runs are ignored)."""
    ok = [r for r in results if "error" not in r]
    rates = budget.noise_rates

    def versus(variant: str, reference: str) -> Comparison:
        arms: Arms = {n: (ablation(ok, reference, n), ablation(ok, variant, n)) for n in rates}
        return compare(variant, reference, arms)

    extra = {
        v: compare(
            f"{v}, clean + extra", f"{v}, clean", {None: (ablation(ok, v, 0.0), scaling(ok, v))}
        )
        for v in ("baseline", HARMONIZED)
    }
    return StudyVerdicts(
        conflicts=_conflicts(ok, rates),
        versus_baseline={v: versus(v, "baseline") for v in (*PAPER_VARIANTS, *ALTERNATIVES)},
        harmonized_versus={v: versus(HARMONIZED, v) for v in ALTERNATIVES},
        scaling=ScalingClaim(extra),
        origin=_origin(ok, rates),
        detection=_detection(ok, rates),
        learning=_learning(ok, budget),
        fragile=budget.seeds < FRAGILE_BELOW_SEEDS,
    )


def _conflicts(results: Sequence[Result], rates: Sequence[float]) -> ConflictsClaim:
    shares = []
    for noise in rates:
        runs = ablation(results, "baseline", noise)
        caption, audio = (detection_stat(runs, PAPER_SCORE, t) for t in DETECTION_TARGETS)
        shares.append(
            ConflictShare(
                noise, conflict_share(runs), (caption, audio) if noise in noisy(rates) else None
            )
        )
    return ConflictsClaim(tuple(shares))


def _origin(results: Sequence[Result], rates: Sequence[float]) -> ConflictOrigin | None:
    noisiest = max(rates)
    clean = conflict_share(ablation(results, "baseline", 0.0))
    most = conflict_share(ablation(results, "baseline", noisiest))
    if clean is None or most is None:
        return None
    return ConflictOrigin(clean, most, noisiest)


def _detection(results: Sequence[Result], rates: Sequence[float]) -> tuple[DetectionFinding, ...]:
    findings = []
    for noise in noisy(rates):
        runs = ablation(results, "baseline", noise)
        for target in DETECTION_TARGETS:
            found = {score: detection_stat(runs, score, target) for score in DETECTION_SCORES}
            paper = found.pop(PAPER_SCORE)
            known = [(stat, score) for score, stat in found.items() if stat is not None]
            if paper is None or not known:
                continue
            best, score = max(known, key=lambda x: x[0].mean)
            findings.append(DetectionFinding(noise, target, paper, best, score))
    return tuple(findings)


def _learning(results: Sequence[Result], budget: Budget) -> tuple[LossNote, ...]:
    """Did each loss learn? Over all ablation runs, by `health.judge`.

    A training loss below chance alone can be memorization of the training pairs, so the
    held-out loss (validation split, batches of the eval batch size, its own chance level)
    decides whether the loss learned something that transfers.
    """
    runs = [r for r in results if r["spec"]["study"] == "ablation"]
    names = sorted(
        {
            k.split("/", 1)[1]
            for r in runs
            for k in r.get("train", {}).get("final", {})
            if k.startswith("loss/") and k != "loss/total"
        }
    )
    notes = []
    for name in names:
        final = Stat.of(r["train"]["final"].get(f"loss/{name}") for r in runs)
        held_out = Stat.of(r["train"]["final"].get(f"val/loss/{name}") for r in runs)
        if final is None:
            continue
        health = judge(
            name,
            final.mean,
            None if held_out is None else held_out.mean,
            budget.batch_size,
            budget.eval_batch_size,
        )
        notes.append(LossNote(health, final, held_out))
    return tuple(notes)

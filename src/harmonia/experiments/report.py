"""docs/RESULTS.md of the study: its numbers and verdicts as Markdown (tables, claims, setup).

Rendering only: the numbers come from `analysis`, every verdict (which differences are clear,
which claims hold, what to advise) from `verdicts`; nothing here decides.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from harmonia.experiments.analysis import (
    INSTANCE_METRICS,
    METRICS,
    Delta,
    Metric,
    Result,
    Stat,
    ablation,
    conflict_share,
    detection_stat,
    ledger_means,
    metric_stat,
    noisy,
    paired,
    reader,
    scaling,
    select,
)
from harmonia.experiments.plan import (
    ALTERNATIVES,
    BUDGETS,
    PAPER_VARIANTS,
    VARIANT_LABELS,
    VARIANTS,
    StudyPlan,
)
from harmonia.experiments.verdicts import (
    DETECTION_SCORES,
    DETECTION_TARGETS,
    EFFECT_THRESHOLD,
    UNTESTED,
    Cell,
    Outcome,
    StudyVerdicts,
    Tally,
    judge_study,
)

SCORE_LABELS: dict[str, str] = {
    "conflict": "conflict (paper)",
    "gradient_norm": "gradient_norm",
    "loss": "online loss",
    "pair_cos": "pair cosine (final model)",
    "el2n": "EL2N (final model)",
}
"""Column labels of the noise-detection table, by `verdicts.DETECTION_SCORES` name."""

CLAIM_WORDS: dict[Outcome, str] = {
    "helps": "**holds**",
    "hurts": "**does not hold: it hurts**",
    "mixed": "**mixed** (helps in some cells, hurts in others)",
    "no clear effect": "**not supported** (no clear effect)",
    "not tested": "**not tested** (too few seeds or no runs)",
}
"""A claim's outcome over its cells, in words."""

EFFECT_WORDS: dict[Outcome, str] = {
    **CLAIM_WORDS,
    "helps": "**helps**",
    "hurts": "**hurts**",
    "no clear effect": "**no clear effect**",
}
"""An alternative's outcome over its cells (not a claim of the paper), in words."""

RULE = f"|d| >= {EFFECT_THRESHOLD:g}"
"""The verdict rule's effect-size condition, as the page states it."""

TARGET_NAMES = {"text": "caption", "audio": "audio"}
"""Detection targets in the page's words."""


def pct(stat: Stat | None) -> str:
    if stat is None:
        return "-"
    return f"{100 * stat.mean:.1f} ± {100 * stat.std:.1f}"


def num(stat: Stat | None, digits: int = 3) -> str:
    if stat is None:
        return "-"
    return f"{stat.mean:.{digits}f} ± {stat.std:.{digits}f}"


def fmt_delta(delta: Delta | None, scale: float = 100.0, digits: int = 1) -> str:
    """`+1.2 ± 0.8 (d +1.5, 3/3)`: mean paired difference ± its std, effect size, seeds won."""
    if delta is None:
        return "-"
    effect = "n/a" if delta.effect is None else f"{delta.effect:+.1f}"
    return (
        f"{scale * delta.diff.mean:+.{digits}f} ± {scale * delta.diff.std:.{digits}f} "
        f"(d {effect}, {delta.wins}/{delta.diff.n})"
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> list[str]:
    aligns = ["---"] * left + ["---:"] * (len(header) - left)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(aligns) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def _media() -> str:
    """The study datasets' clip (the default of `harmonia data build`), in words."""
    from harmonia.data.config import BuildConfig

    m = BuildConfig().media
    seconds = m.audio_samples / m.sample_rate
    return (
        f"{m.frames} frames of {m.height}x{m.width} at {m.fps} fps, {seconds:g} s of "
        f"{m.sample_rate / 1000:g} kHz audio, {m.captions_per_clip} captions"
    )


def _model() -> str:
    from harmonia.models.sizes import SIZES

    backbone = SIZES["tiny"]["backbone"]
    return (
        f"width {backbone['width']}, depth {backbone['depth']}, conv video stem and log-mel "
        "audio front end"
    )


def _drop_fraction() -> float:
    """Share of the training split the filtering variant leaves out (from its shipped config)."""
    from harmonia.training.config import load_train_config

    return load_train_config(VARIANTS["filter"]).data.drop_suspects.fraction


def _cells_text(cells: Iterable[Cell]) -> str:
    """Each cell's metric, difference and verdict, one per line of a table cell."""
    return "<br>".join(f"{c.metric.label} {fmt_delta(c.delta)}: {c.verdict}" for c in cells)


class Report:
    """Builds the Markdown from the plan, the results and the run facts."""

    def __init__(self, plan: StudyPlan, results: Sequence[Result], facts: Mapping[str, Any]):
        self.plan = plan
        self.budget = plan.budget
        self.results = [r for r in results if "error" not in r]
        self.failed = [r for r in results if "error" in r]
        self.facts = facts
        self.judged: StudyVerdicts = judge_study(self.budget, self.results)

    def ablation(self, variant: str, noise: float) -> list[Result]:
        return ablation(self.results, variant, noise)

    # ---- sections
    def render(self) -> str:
        out: list[str] = [
            "# Results: the paper's claims on AV-MNIST-T",
            "",
            "<!-- Written by `harmonia experiment reproduce`; do not edit by hand. -->",
            "",
            "Wu et al. (NeurIPS 2022) claim, for VATT pre-trained on HowTo100M: (1) the video-audio "
            "and video-text losses conflict for many triplets; (2) per-triplet gradient realignment "
            "(GR) and (3) the conflict-based curriculum (CL) each improve downstream retrieval and "
            "linear-probe results, both together most; (4) with harmonization, adding a noisier "
            "source helps, without it it does not. This page tests the same claims on AV-MNIST-T "
            "(real handwriting, real speech, templated captions) with controlled misalignment. "
            "Every number below comes from the command in [Reproduce](#reproduce).",
            "",
        ]
        out += self.setup()
        out += self.claims()
        out += self.verdicts()
        out += self.ablation_tables()
        out += self.space_table()
        out += self.backbone_table()
        out += self.scaling_table()
        out += self.detection_table()
        out += self.conflict_table()
        out += self.figures()
        out += self.findings()
        out += self.reproduce()
        return "\n".join(out).rstrip() + "\n"

    def setup(self) -> list[str]:
        b, f = self.budget, self.facts
        n_runs = len(self.plan.runs)
        lines = [
            "## Setup",
            "",
            f"- **Budget `{b.name}`**: {b.description}."
            + (
                ""
                if b.name == "full"
                else " This is not the full study (`--budget full`: "
                f"{BUDGETS['full'].seeds} seeds, {BUDGETS['full'].steps} steps); treat its "
                "verdicts as weaker evidence."
            ),
            f"- **Runs**: {n_runs} planned, {len(self.results)} finished"
            + (f", **{len(self.failed)} failed** (listed at the end)" if self.failed else "")
            + (
                f", **{len(f.get('missing', []))} not run** (listed at the end)"
                if f.get("missing")
                else ""
            )
            + f"; seeds 0..{b.seeds - 1} for every cell.",
            f"- **Data**: AV-MNIST-T built from {f.get('source', '?')}: {b.train} training, "
            f"{b.val} validation, {b.test} test clips (default media: {_media()}); "
            f"misalignment {', '.join(f'{n:.0%}' for n in b.noise_rates)} "
            "of the training triplets (caption, audio or both from another digit, mix 0.5/0.25/0.25); "
            f"validation and test clean. The scaling study adds an `extra` source of {b.train} clips "
            f"with {b.extra_noise:.0%} misaligned to the 0% dataset. One dataset per noise rate, "
            "built once and shared by all its runs (same seed: same test split everywhere).",
            f"- **Model and training**: VATT `tiny` ({_model()}; modality-agnostic backbone "
            f"unless noted), batch {b.batch_size}, {b.steps} steps of AdamW (lr 1e-3, 10% warm-up, "
            "cosine), one CPU thread per run (`src/harmonia/configs/study-*.yaml`).",
            "- **Variants** (one shipped config each): baseline = `method: none` (losses summed; "
            "conflicts only measured); +GR = per-sample PCGrad on the shared video embedding; "
            "+CL = the paper's curriculum: a threshold on each triplet's gradient cosine (only "
            "non-conflicting triplets train the video encoder at first, all by half-way) plus the "
            "ledger-driven sampler on the same conflict score (cleaner triplets drawn first); "
            "+GR+CL = both. What a practitioner would try instead with the same signal and "
            "budget: +CL (loss score) = the same sampler driven by the gradient-free online loss "
            "score (ledger score `loss`), no realignment and no threshold; filter + retrain = the "
            f"baseline trained again without the {_drop_fraction():.0%} of training triplets "
            "that the ledger of the baseline run of the same noise rate and seed suspects most "
            "(ledger score `gradient_norm`, the library default).",
            "- **Metrics** (test split, `harmonia.evaluation.evaluate`): zero-shot digit accuracy; "
            "text->video and audio->video R@1 at class level (a hit is any clip with the caption's "
            "digit and motion / the audio's digit; instance-level R@1 is in a separate table); "
            f"linear probes (logistic regression on frozen pooled features, fitted on the "
            f"{b.train} training clips); ledger AUROC = how well the run's own ledger (its "
            "variant's score) ranks the misaligned training triplets (any flag). All in %, mean ± sample std over seeds.",
            "- **Differences** to the baseline are paired by seed: `Δ ± sd (d, w/n)` is the mean "
            "difference ± its std over seeds, d = mean difference / pooled seed std of the two "
            "arms (the effect in units of the seed std), w/n = seeds where the variant is better. "
            f"A verdict says *helps* / *hurts* only when {RULE} and every seed agrees.",
            "",
        ]
        return lines

    def claims(self) -> list[str]:
        b, judged = self.budget, self.judged
        lines = ["## The claims, and what a practitioner would do instead", ""]
        rows = []
        # (1) conflicts
        for share in judged.conflicts.shares:
            text = f"{pct(share.fraction)} % of triplets conflict (mean over training)"
            if share.detection is not None:
                caption, audio = share.detection
                text += (
                    f"; the conflict score's AUROC for caption-misaligned triplets {num(caption)}, "
                    f"audio-misaligned {num(audio)}"
                )
            rows.append(
                ["(1) conflicts are common", f"baseline, {share.noise:.0%} misaligned", text]
            )
        # (2), (3): GR, CL, GR+CL vs baseline on the headline metrics at each noise rate
        for claim, variant in (
            ("(2) GR helps", "gr"),
            ("(3) CL helps", "cl"),
            ("(2+3) both most", "gr+cl"),
        ):
            for noise in b.noise_rates:
                rows.append(
                    [
                        claim,
                        f"{VARIANT_LABELS[variant]} vs baseline, {noise:.0%}",
                        _cells_text(judged.versus_baseline[variant].at(noise)),
                    ]
                )
        # the alternatives: vs the baseline, and the paper's best arm against each
        for variant in ALTERNATIVES:
            for noise in b.noise_rates:
                rows.append(
                    [
                        "(alt) the same signal used otherwise",
                        f"{VARIANT_LABELS[variant]} vs baseline, {noise:.0%}",
                        _cells_text(judged.versus_baseline[variant].at(noise)),
                    ]
                )
            for noise in b.noise_rates:
                rows.append(
                    [
                        "(alt) is harmonization the best use?",
                        f"+GR+CL vs {VARIANT_LABELS[variant]}, {noise:.0%}",
                        _cells_text(judged.harmonized_versus[variant].at(noise)),
                    ]
                )
        # (4) scaling
        for variant, comparison in judged.scaling.comparisons.items():
            rows.append(
                [
                    "(4) extra noisy source helps only with harmonization",
                    f"{VARIANT_LABELS[variant]}: clean+extra vs clean",
                    _cells_text(comparison.cells),
                ]
            )
        lines += _table(["claim", "comparison", "result (Δ in points): verdict"], rows, left=3)
        return lines

    @staticmethod
    def _cells(count: Tally, unit: str = "(noise rate, headline metric)") -> str:
        rest = "".join(f", {what} in {count[what]}" for what in UNTESTED if count[what])
        return (
            f"helps in {count['helps']}, hurts in {count['hurts']}, no clear effect in "
            f"{count['no clear effect']}{rest} of {count.total} {unit} cells"
        )

    def verdicts(self) -> list[str]:
        """Each claim in one line, and what it means for a user deciding on harmonization."""
        judged = self.judged
        lines = ["## What holds on AV-MNIST-T", ""]
        if judged.conflicts.measured:
            shares = ", ".join(
                f"{100 * s.fraction.mean:.0f}% at {s.noise:.0%}"
                for s in judged.conflicts.shares
                if s.fraction is not None
            )
            span = judged.conflicts.auroc_range
            marks = (
                f"; as a noisiness score the conflict reaches AUROC {span[0]:.2f}-"
                f"{span[1]:.2f} for misaligned triplets"
                if span is not None
                else ""
            )
            lines.append(
                f"- (1) conflicts are common: {shares} of triplets conflict (baseline){marks}."
            )
        claims = {"(2) GR helps": "gr", "(3) CL helps": "cl", "(2+3) both help": "gr+cl"}
        for claim, variant in claims.items():
            comparison = judged.versus_baseline[variant]
            lines.append(
                f"- {claim}: {CLAIM_WORDS[comparison.outcome]}; {self._cells(comparison.tally)}."
            )
        extra = judged.scaling.comparisons
        lines.append(
            "- (4) a noisier extra source helps only with harmonization: "
            f"{'**holds**' if judged.scaling.holds else '**not supported**'}; with "
            f"+GR+CL the extra source {self._cells(extra['gr+cl'].tally, 'headline metric')}, "
            f"without it {self._cells(extra['baseline'].tally, 'headline metric')}."
        )
        for variant in ALTERNATIVES:
            alone = judged.versus_baseline[variant]
            versus = judged.harmonized_versus[variant]
            lines.append(
                f"- {VARIANT_LABELS[variant]} vs baseline: {EFFECT_WORDS[alone.outcome]}; "
                f"{self._cells(alone.tally)}. +GR+CL against it: {self._cells(versus.tally)}."
            )
        advice = judged.advice
        helpful = [VARIANT_LABELS[v] for v in advice.helpful]
        instead = [VARIANT_LABELS[v] for v in advice.instead]
        lines += [
            "",
            "**For a user deciding whether to turn harmonization on**: "
            + (
                f"on this data {', '.join(helpful)} improved downstream results without hurting "
                "any; weigh that against its cost (embedding space costs about as much as a plain "
                "step, parameter space several times more; docs/harmonizer.md)."
                if helpful
                else "on this data none of the paper's arms gave a consistent downstream gain "
                f"under the verdict rule ({RULE}, every seed agreeing)"
                + (
                    f", while {' and '.join(instead)} helped in some cells and hurt in none (a "
                    "weak result: few cells pass the rule); on this evidence the gradient-free "
                    "routes are the safer use of the per-sample signal."
                    if instead
                    else ". The per-sample measurements are still useful as a noisiness signal "
                    "(the ledger and `harmonia audit`)."
                )
            )
            + " Read this together with the learning notes under Findings: a loss that has not "
            "learned to generalize gives conflicts that say little about misalignment.",
            "",
        ]
        return lines

    def _mean_rows(self, metrics: Sequence[Metric]) -> list[list[str]]:
        """One row per (noise rate, variant) of the ablation: mean ± std of each metric."""
        rows = []
        for noise in self.budget.noise_rates:
            for variant, label in VARIANT_LABELS.items():
                runs = self.ablation(variant, noise)
                means = (pct(metric_stat(runs, m)) for m in metrics)
                rows.append([f"{noise:.0%}", label, *means])
        return rows

    def ablation_tables(self) -> list[str]:
        lines = ["## Ablation (modality-agnostic backbone, embedding space)", ""]
        header = ["noise", "variant", *(m.label for m in METRICS)]
        lines += _table(header, self._mean_rows(METRICS), left=2)
        lines += ["### Difference to the baseline (paired by seed, points)", ""]
        rows = []
        for noise in self.budget.noise_rates:
            for variant in (*PAPER_VARIANTS, *ALTERNATIVES):
                base, runs = self.ablation("baseline", noise), self.ablation(variant, noise)
                deltas = (fmt_delta(paired(base, runs, reader(m))) for m in METRICS)
                rows.append([f"{noise:.0%}", VARIANT_LABELS[variant], *deltas])
        lines += _table(header, rows, left=2)
        lines += [
            "### Instance-level retrieval (the clip's own caption / audio is the only hit)",
            "",
        ]
        header = ["noise", "variant", *(m.label for m in INSTANCE_METRICS)]
        return lines + _table(header, self._mean_rows(INSTANCE_METRICS), left=2)

    def _contrast(
        self, title: str, arms: Sequence[tuple[str, list[Result]]], note: str
    ) -> list[str]:
        lines = [title, "", note, ""]
        header = ["arm", "runs", "s / run", *(m.label for m in METRICS)]
        rows = []
        for label, runs in arms:
            seconds = Stat.of(r.get("train_seconds") for r in runs)
            rows.append(
                [
                    label,
                    str(len(runs)),
                    "-" if seconds is None else f"{seconds.mean:.0f}",
                    *(pct(metric_stat(runs, m)) for m in METRICS),
                ]
            )
        return lines + _table(header, rows)

    def space_table(self) -> list[str]:
        noise = self.budget.contrast_noise
        emb = self.ablation("gr", noise)
        par = select(self.results, study="space", variant="gr", noise=noise)
        base = self.ablation("baseline", noise)
        lines = self._contrast(
            f"## GR in embedding vs exact parameter space ({noise:.0%} misaligned)",
            [("baseline", base), ("+GR, embedding", emb), ("+GR, parameters", par)],
            "Embedding space realigns the two losses' gradients at the pooled video feature (cheap); "
            "parameter space realigns exact per-sample gradients of the whole video encoder.",
        )
        rows = [
            ["parameters - embedding", *(fmt_delta(paired(emb, par, reader(m))) for m in METRICS)]
        ]
        rows.append(
            ["parameters - baseline", *(fmt_delta(paired(base, par, reader(m))) for m in METRICS)]
        )
        return lines + _table(["difference", *(m.label for m in METRICS)], rows)

    def backbone_table(self) -> list[str]:
        noise = self.budget.contrast_noise
        arms = []
        for variant in ("baseline", "gr+cl"):
            arms.append((f"agnostic, {VARIANT_LABELS[variant]}", self.ablation(variant, noise)))
            arms.append(
                (
                    f"specific, {VARIANT_LABELS[variant]}",
                    select(self.results, study="backbone", variant=variant, noise=noise),
                )
            )
        lines = self._contrast(
            f"## Modality-agnostic vs modality-specific backbone ({noise:.0%} misaligned)",
            arms,
            "With a modality-specific backbone the audio and text towers do not share the video "
            "encoder, so only the video tower sees both losses' gradients.",
        )
        rows = []
        for i, kind in ((0, "agnostic"), (1, "specific")):
            base, both = arms[i][1], arms[i + 2][1]
            rows.append(
                [
                    f"{kind}: +GR+CL - baseline",
                    *(fmt_delta(paired(base, both, reader(m))) for m in METRICS),
                ]
            )
        return lines + _table(["difference", *(m.label for m in METRICS)], rows)

    def scaling_table(self) -> list[str]:
        b = self.budget
        arms = []
        for variant in ("baseline", "gr+cl"):
            arms.append((f"clean, {VARIANT_LABELS[variant]}", self.ablation(variant, 0.0)))
            arms.append(
                (
                    f"clean + extra, {VARIANT_LABELS[variant]}",
                    scaling(self.results, variant),
                )
            )
        lines = self._contrast(
            "## Scaling: the clean source alone vs clean + a noisier extra source",
            arms,
            f"clean: {b.train} clips, 0% misaligned; extra: {b.train} more clips "
            f"({b.extra_noise:.0%} misaligned) from the training speakers and images. Same number "
            "of steps, so the extra source adds variety, not updates. Probes are fitted on the "
            "clean clips in both arms.",
        )
        rows = []
        for i, variant in ((0, "baseline"), (1, "gr+cl")):
            clean, extra = arms[2 * i][1], arms[2 * i + 1][1]
            rows.append(
                [
                    f"{VARIANT_LABELS[variant]}: extra - clean",
                    *(fmt_delta(paired(clean, extra, reader(m))) for m in METRICS),
                ]
            )
        return lines + _table(["difference", *(m.label for m in METRICS)], rows)

    def detection_table(self) -> list[str]:
        lines = [
            "## Noise detection: the paper's conflict score vs the alternatives",
            "",
            "How well each per-triplet score finds the misaligned training triplets of the "
            "baseline runs: AUROC / precision at k (k = the number of misaligned triplets, so "
            "random ranking gives the prevalence), caption-misaligned and audio-misaligned "
            "separately, mean ± std over seeds. The three ledger scores are replayed from the "
            "same per-sample observations of each run (its `conflict_trace.csv`), each as the "
            "EMA the ledger would have held: the paper's conflict score (smallest cosine between "
            "the two losses' gradients), `gradient_norm` (the library default: how much larger "
            "than its batch's a triplet's largest per-loss gradient is) and `loss` (the same with "
            "per-sample losses; no gradients). The last two columns need no training-time "
            "signal at all: the cosine of each triplet's video with its own caption / audio under "
            "the final model, and an EL2N-style error norm of the matched pair within random "
            "blocks of 32.",
            "",
        ]
        header = ["noise", "target", *(SCORE_LABELS[s] for s in DETECTION_SCORES), "prevalence"]
        rows = []
        for noise in noisy(self.budget.noise_rates):
            runs = self.ablation("baseline", noise)
            for target in DETECTION_TARGETS:
                cells = []
                for score in DETECTION_SCORES:
                    auc = detection_stat(runs, score, target)
                    p_k = detection_stat(runs, score, target, "precision_at_k")
                    cells.append(f"{num(auc, 2)} / {num(p_k, 2)}")
                prev = detection_stat(runs, "pair_cos", target, "prevalence")
                rows.append([f"{noise:.0%}", TARGET_NAMES[target], *cells, num(prev, 2)])
        return lines + _table(header, rows, left=2)

    def conflict_table(self) -> list[str]:
        lines = [
            "## Conflicts during training",
            "",
            "Share of triplets whose two gradients (at the video embedding) have a negative cosine, "
            "averaged over all logged steps, and the final ledger score by ground truth.",
            "",
        ]
        header = [
            "noise",
            "variant",
            "conflicting %",
            "score clean",
            "score caption-misaligned",
            "score audio-misaligned",
            "score both",
        ]
        rows = []
        for noise in self.budget.noise_rates:
            for variant, label in VARIANT_LABELS.items():
                runs = self.ablation(variant, noise)
                frac = conflict_share(runs)
                means = [ledger_means(r) for r in runs]
                cells = [
                    num(Stat.of(m.get(g) for m in means))
                    for g in ("clean", "text", "audio", "both")
                ]
                rows.append([f"{noise:.0%}", label, pct(frac), *cells])
        return lines + _table(header, rows, left=2)

    def figures(self) -> list[str]:
        lines = ["## Figures", ""]
        for name, caption in self.facts.get("figures", []):
            lines += [f"![{caption}](figures/{name})", "", f"*{caption}*", ""]
        return lines

    def findings(self) -> list[str]:
        b, judged = self.budget, self.judged
        lines = ["## Findings", ""]
        for variant in (*PAPER_VARIANTS, *ALTERNATIVES):
            count = judged.versus_baseline[variant].tally
            lines.append(
                f"- **{VARIANT_LABELS[variant]} vs baseline** over {count.total} (noise rate, "
                f"headline metric) cells: helps in {count['helps']}, hurts in {count['hurts']}, "
                f"no clear effect in {count['no clear effect']}"
                + (f", too few seeds in {count['too few seeds']}" if count["too few seeds"] else "")
                + (f", not run in {count['no runs']}" if count["no runs"] else "")
                + "."
            )
        lines += self.learning_notes()
        not_learned = judged.not_learned
        # where conflicts come from
        origin = judged.origin
        if origin is not None:
            clean, noisiest = origin.clean, origin.noisiest
            why = (
                f"A likely reason: loss {', '.join(f'`{n}`' for n in not_learned)} did not "
                "learn anything that transfers (see above), and such a gradient has a negative "
                "cosine with the other loss's gradient for about half of the triplets whatever "
                "their alignment."
                if not_learned
                else "A likely reason: the two losses ask different things of a correctly "
                "aligned triplet (the audio carries the digit but not the motion)."
            )
            lines.append(
                f"- **Conflicts track misalignment**: {100 * clean.mean:.0f}% conflicting at "
                f"0% vs {100 * noisiest.mean:.0f}% at {origin.noisiest_rate:.0%} misaligned "
                "(baseline)."
                if origin.specific
                else "- **Conflicts are not specific to misalignment**: with 0% misaligned "
                f"triplets {100 * clean.mean:.0f}% of triplets have conflicting gradients "
                f"(baseline, mean over training), vs {100 * noisiest.mean:.0f}% at "
                f"{origin.noisiest_rate:.0%}. {why} PCGrad then edits the gradients of triplets "
                "that are not misaligned, and the curriculum holds those triplets back."
            )
        for found in judged.detection:
            lines.append(
                f"- At {found.noise:.0%} misaligned, the paper's conflict score finds the "
                f"{TARGET_NAMES[found.target]}-misaligned triplets of the "
                f"baseline with AUROC {num(found.paper, 2)}; the best other score "
                f"({SCORE_LABELS[found.best_score]}) reaches {num(found.best, 2)}."
            )
        lines += [
            "- Caveats: a tiny model and short schedules on a small synthetic-but-real dataset; "
            "effects of a few points are within the seed spread of such runs, so 'no clear "
            "effect' is not evidence of no effect"
            + (
                f", and with {b.seeds} seed(s) every verdict is fragile." if judged.fragile else "."
            ),
            "",
        ]
        if self.failed:
            lines += ["### Failed runs", ""]
            lines += [f"- `{r['name']}`: {r['error']}" for r in self.failed]
            lines.append("")
        if self.facts.get("missing"):
            lines += ["### Runs not run (the study was stopped before them)", ""]
            lines += [f"- `{name}`" for name in self.facts["missing"]]
            lines.append("")
        return lines

    def learning_notes(self) -> list[str]:
        """Did each loss learn (`verdicts.LossNote`)? One line per loss: the numbers, the verdict."""
        b = self.budget
        lines = []
        for note in self.judged.learning:
            health, final, held_out = note.health, note.final, note.held_out
            where = (
                f"training {num(final, 2)} (chance ln {b.batch_size} = {health.train_chance:.2f})"
                + (
                    f", held-out {num(held_out, 2)} (chance ln {b.eval_batch_size} = "
                    f"{health.held_out_chance:.2f})"
                    if held_out is not None
                    else ""
                )
            )
            if health.verdict == "near chance":
                said = (
                    "it stayed near chance, so in this budget its gradient is mostly noise and "
                    "its 'conflicts' with the other loss say little about misalignment."
                )
            elif health.verdict == "memorizes":
                said = (
                    f"it fit the training pairs ({100 * note.train_below_chance:.0f}% below "
                    "chance) but not held-out ones: memorization of the training set, so its "
                    "gradient carries little that transfers and its 'conflicts' with the other "
                    "loss say little about misalignment."
                )
            else:
                below = note.held_out_below_chance
                assert below is not None  # learned implies a held-out loss
                said = f"it learned ({100 * below:.0f}% below chance on held-out pairs)."
            lines.append(
                f"- **Loss `{health.name}`** at the end (all ablation runs): {where}: {said}"
            )
        return lines

    def reproduce(self) -> list[str]:
        f = self.facts
        versions = ", ".join(f"{k} {v}" for k, v in f.get("versions", {}).items())
        span, cpu = f.get("runs_span_s"), f.get("run_seconds")
        lines = [
            "## Reproduce",
            "",
            "```bash",
            "harmonia experiment reproduce --budget "
            f"{self.budget.name}  # add --work DIR, --jobs N, --source DIR as needed",
            "```",
            "",
            "Invocations that produced this page (same work directory; finished runs are cached "
            "there as `result.json`, keyed by the resolved config and the dataset checksum, so a "
            "stopped study resumes where it stopped; `--report-only` writes the page from the "
            "cache without training):",
            "",
        ]
        rows = [
            [
                str(inv.get("started", "?")),
                f"`{inv.get('command', '?')}`",
                f"{float(inv.get('wall_s', 0.0)) / 60:.1f}",
                str(inv.get("ran", 0)),
                str(inv.get("cached", 0)),
                str(inv.get("failed", 0)),
            ]
            for inv in f.get("invocations", [])
        ]
        lines += _table(
            ["started", "command", "wall (min)", "runs trained", "reused", "failed"], rows, left=2
        )
        if span:
            lines.append(
                f"- Training + evaluation of the runs on this page: {span / 60:.1f} min of wall "
                f"time from the first run's start to the last run's end"
                + (f"; the runs' own times sum to {cpu / 60:.1f} min" if cpu else "")
                + f" ({f.get('jobs', 2)} runs at a time, one thread each; dataset builds not "
                "included)."
            )
        lines += [
            f"- Machine: {f.get('machine', '?')}.",
            f"- Versions: {versions}.",
            "",
        ]
        return lines


def render(plan: StudyPlan, results: Sequence[Result], facts: Mapping[str, Any]) -> str:
    """The RESULTS.md text."""
    return Report(plan, results, facts).render()

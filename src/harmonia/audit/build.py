"""The audit report: one self-contained HTML file showing how training went and which triplets
look misaligned, plus a CSV of every sample's conflict score beside it.

Everything (plots, frame thumbnails, audio) is embedded as data: URIs so the file opens offline.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from harmonia.audit import plots
from harmonia.audit.html import (
    audio_player,
    esc,
    img,
    key_values,
    page,
    section,
    table,
    visible,
)
from harmonia.audit.media import data_uri, thumbnail_strip, wav_bytes
from harmonia.audit.samples import MediaLookup, SampleMedia, dataset_media
from harmonia.data.importer import source_folder
from harmonia.data.index import SUMMARY_FILE as DATA_SUMMARY
from harmonia.data.index import read_index
from harmonia.errors import HarmoniaError
from harmonia.evaluation.labels import CLASS_LABELS, NOISE_FLAGS, has_ground_truth, noise_flag
from harmonia.evaluation.noise_detection import detection_metrics, precision_at
from harmonia.evaluation.run_dir import RunDir
from harmonia.files import inside, parse_json, refuse_special, write_atomic
from harmonia.harmonization.ledger import LedgerEntry
from harmonia.training.layout import SUMMARY_FILE

LABEL_FIELDS = ("split", *CLASS_LABELS)
"""Index fields copied into the CSV when present."""
META_FIELDS = ("source", "file", "start", "end")
"""Where a clip came from (AV-MNIST-T's source; an imported video's file and the clip's span in
seconds), when the index records it: shown beside the clip (the file a link that plays the span
when the dataset records the folder it was imported from) and copied into the CSV after the
labels."""
NO_TRUTH = (
    "the dataset index has no misalignment flags ({flags}), so there is no ground truth to "
    "score against (e.g. a dataset imported from your own videos)"
).format(flags=", ".join(NOISE_FLAGS))
"""Why the parts of the report that need ground-truth flags are left out."""


@dataclass(frozen=True)
class AuditOutputs:
    """Where the report went and what it holds."""

    html: Path
    csv: Path
    n_scored: int
    n_shown: int


def build_audit(
    run_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    top_k: int = 16,
    out: str | Path | None = None,
    media: MediaLookup | None = None,
) -> AuditOutputs:
    """Write RUN/audit.html (or `out`) and the per-sample score CSV beside it."""
    if top_k < 0:
        raise HarmoniaError(f"--top must be >= 0, got {top_k}")
    run = RunDir(run_dir)
    records = run.metrics()
    ledger = run.ledger()
    if not records and not ledger:
        raise HarmoniaError(f"nothing to audit in {run.path}: no metrics.jsonl and no ledger.csv")
    recorded = run.dataset_dir()
    if data_dir is not None:
        dataset: Path | None = run.require_dataset(data_dir)
    else:  # the report is still useful without media, so a vanished dataset is not an error
        dataset = recorded if recorded is not None and recorded.is_dir() else None
    index = {r["id"]: r for r in read_index(dataset)} if dataset is not None else {}
    # whether the dataset records misalignment flags at all (a dataset imported from one's own
    # videos has none): without them the ground-truth parts are left out, saying why
    truth = dataset is None or any(noise_flag(r) is not None for r in index.values())
    folder = source_folder(_read_json(dataset / DATA_SUMMARY)) if dataset is not None else None
    html_path = Path(out) if out is not None else run.path / "audit.html"
    csv_path = html_path.with_name(html_path.stem + "_scores.csv")
    for path in (html_path, csv_path):
        refuse_special(path)  # before writing either

    csv_text = _scores_csv(ledger, index)
    write_atomic(csv_path, csv_text)

    suspects = ledger[:top_k]
    if media is None and dataset is not None and suspects:
        media = dataset_media(dataset)
    found = dict(media([r.id for r in suspects])) if media is not None and suspects else {}

    sections = [
        ("overview", "Overview", _overview(run, records, ledger, dataset or recorded, index)),
        ("training", "Training curves", _training(records)),
        ("cosines", "Cosine distribution", _cosines(records)),
        ("curriculum", "Curriculum", _curriculum(records)),
        (
            "scores",
            "Noisiness scores",
            _scores(ledger, index, csv_path.name, csv_text, _ledger_score(run), truth),
        ),
        (
            "suspects",
            f"Top-{len(suspects)} suspects",
            _suspects(suspects, index, found, dataset, truth, folder),
        ),
    ]
    meta = f"run <code>{esc(run.path)}</code> &middot; generated {esc(time.strftime('%Y-%m-%d %H:%M'))}"
    write_atomic(html_path, page(f"harmonia audit: {run.path.name}", meta, sections))
    return AuditOutputs(html=html_path, csv=csv_path, n_scored=len(ledger), n_shown=len(suspects))


def _ledger_score(run: RunDir) -> str:
    """The run's harmonize.ledger.score (runs from before the option recorded conflict)."""
    harmonize = run.config().get("harmonize")
    ledger = harmonize.get("ledger") if isinstance(harmonize, dict) else None
    score = ledger.get("score") if isinstance(ledger, dict) else None
    return score if isinstance(score, str) else "conflict"


def _figure(fig: Figure | None, alt: str) -> str | None:
    return None if fig is None else img(plots.figure_png(fig), alt)


def _missing(what: str) -> str:
    return f'<p class="note">{esc(what)}</p>'


def _overview(
    run: RunDir,
    records: Sequence[dict[str, Any]],
    ledger: Sequence[LedgerEntry],
    dataset: Path | None,
    index: Mapping[str, Mapping[str, Any]],
) -> str:
    cfg = run.config()
    harmonize = cfg.get("harmonize") if isinstance(cfg.get("harmonize"), dict) else {}
    pairs: list[tuple[str, object]] = [("run directory", run.path)]
    for key in ("method", "space", "curriculum"):
        if isinstance(harmonize, dict) and key in harmonize:
            pairs.append((f"harmonize.{key}", _short(harmonize[key])))
    if records:
        pairs.append(("logged steps", f"{len(records)} (last step {records[-1].get('step')})"))
    summary = _read_json(run.path / SUMMARY_FILE)
    for key in ("steps", "time", "stopped", "status"):
        if key in summary:
            pairs.append((f"summary.{key}", _short(summary[key])))
    skipped = summary.get("skipped")
    if isinstance(skipped, list):
        pairs.append(("corrupt samples skipped", len(skipped)))
    pairs.append(("samples in ledger", len(ledger)))
    if dataset is None:
        pairs.append(("dataset", "unknown (pass --data)"))
    elif index:
        pairs.append(("dataset", f"{dataset} ({len(index)} samples)"))
        if not has_ground_truth(index.values()):
            pairs.append(("ground truth", "none: the index has no labels or misalignment flags"))
    else:
        pairs.append(("dataset", f"{dataset} not found (pass --data)"))
    body = f"<div>{key_values(pairs)}{_learning(summary)}</div>"
    evaluation = _read_json(run.eval_path)
    if evaluation:
        split = evaluation.get("split", "?")
        body += (
            f"<div><h3>Evaluation on '{esc(split)}' (eval.json)</h3>{_eval_table(evaluation)}</div>"
        )
    return section("overview", "Overview", f'<div class="figs">{body}</div>')


def _learning(summary: Mapping[str, Any]) -> str:
    """Per loss: did it learn? (summary.json ``learning``; its scores mean little otherwise)."""
    from harmonia.training.health import LossHealth

    learning = summary.get("learning")
    if not isinstance(learning, dict) or not learning:
        return ""
    rows = []
    for name, data in learning.items():
        try:
            health = LossHealth.from_dict(str(name), data)
        except (KeyError, TypeError, ValueError):
            continue
        rows.append((esc(name), esc(health.verdict), esc(health.sentence())))
    if not rows:
        return ""
    return "<h3>Learning health</h3>" + table(["loss", "verdict", "numbers"], rows)


def _short(value: object) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = parse_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _eval_table(evaluation: Mapping[str, Any]) -> str:
    from harmonia.evaluation.table import headline_rows

    rows = [(esc(name), esc(value)) for name, value in headline_rows(evaluation)]
    html = table(["metric", "value"], rows, numeric=(1,)) if rows else ""
    skipped = evaluation.get("skipped_metrics")
    if isinstance(skipped, dict) and skipped:
        reasons = "; ".join(dict.fromkeys(str(r) for r in skipped.values()))
        html += _missing(f"{len(skipped)} metrics skipped ({reasons}); see eval.json")
    return html


def _training(records: Sequence[dict[str, Any]]) -> str:
    figs = [
        _figure(plots.loss_figure(records), "loss curves"),
        _figure(plots.conflict_figure(records), "conflict fraction and mean cosine"),
    ]
    shown = [f for f in figs if f]
    body = (
        f'<div class="figs two">{"".join(shown)}</div>' if shown else _missing("no losses logged")
    )
    return section(
        "training",
        "Training curves",
        body,
        "Thin lines: every logged step; thick: running mean. A conflict is a sample whose two "
        "losses' gradients on the shared video representation have negative cosine.",
    )


def _cosines(records: Sequence[dict[str, Any]]) -> str:
    return _figure_section(
        "cosines",
        "Cosine distribution over training",
        _figure(plots.cosine_heatmap_figure(records), "cosine distribution heatmap"),
        "this run logged no cosine histograms (hist/<a>~<b>)",
        "Per-sample cosine between the losses' gradients, as 40-bin histograms per logged step.",
    )


def _curriculum(records: Sequence[dict[str, Any]]) -> str:
    return _figure_section(
        "curriculum",
        "Curriculum",
        _figure(plots.curriculum_figure(records), "curriculum kept fraction"),
        "no curriculum in this run (nothing logged under curriculum/)",
        "Fraction of each batch whose conflict score passed the curriculum threshold at that step.",
    )


def _figure_section(anchor: str, title: str, fig: str | None, missing: str, note: str) -> str:
    return section(anchor, title, fig or _missing(missing), note)


def _scores(
    ledger: Sequence[LedgerEntry],
    index: Mapping[str, Mapping[str, Any]],
    csv_name: str,
    csv_text: str,
    score_kind: str = "gradient_norm",
    truth: bool = True,
) -> str:
    if not ledger:
        return section("scores", "Noisiness scores", _missing("this run has no ledger.csv"))
    flags = [noise_flag(index[r.id]) if r.id in index else None for r in ledger]
    figure = _figure(plots.score_histogram_figure([r.score for r in ledger], flags), "scores")
    table_html = (
        "" if truth else _missing(f"Precision at k and AUROC are not computed: {NO_TRUTH}.")
    )
    known = [(r.score, f) for r, f in zip(ledger, flags, strict=True) if f is not None]
    if known:
        res = detection_metrics(
            [s for s, _ in known], [f for _, f in known], higher_is_noisier=False
        )
        table_html = key_values(
            [
                ("samples with ground truth", f"{res.n} ({res.n_noisy} misaligned)"),
                ("AUROC (low score = misaligned)", _fmt(res.auroc)),
                (
                    "average precision",
                    f"{_fmt(res.average_precision)} (random: {res.prevalence:.3f})",
                ),
                ("precision among the lowest-scored n_misaligned", _fmt(res.precision_at_k)),
                *(
                    (f"precision among the {k} most suspect", _fmt(precision_at(flags, k)))
                    for k in (16, 100)
                    if len(known) >= k
                ),
            ]
        )
    link = (
        f'<p class="small">Every sample\'s score: <a download="{esc(csv_name)}" '
        f'href="{data_uri("text/csv", csv_text.encode("utf-8"))}">{esc(csv_name)}</a> '
        f"(also written beside this file).</p>"
    )
    return section(
        "scores",
        "Noisiness scores",
        f'<div class="figs">{figure or ""}<div>{table_html}{link}</div></div>',
        SCORE_NOTES.get(score_kind, SCORE_NOTES["gradient_norm"]),
    )


SCORE_NOTES = {
    "gradient_norm": (
        "The ledger's score (harmonize.ledger.score: gradient_norm) is the exponential moving "
        "average of (1 - r) / (1 + r), r being how many times larger than the batch's median a "
        "sample's largest per-loss gradient is: low (towards -1) means one loss keeps pulling "
        "hard on this sample, the signature of a partner that does not fit (docs/curriculum.md)."
    ),
    "conflict": (
        "The ledger's score (harmonize.ledger.score: conflict) is the exponential moving average "
        "of a sample's gradient cosine between the two losses; low (negative) means its caption "
        "and audio pull the video representation apart."
    ),
}


def _fmt(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"


def _truth_badge(record: Mapping[str, Any] | None) -> str:
    if record is None or noise_flag(record) is None:
        return '<span class="badge unk">unknown</span>'
    which = [f.removeprefix("misaligned_") for f in NOISE_FLAGS if record.get(f)]
    if which:
        return f'<span class="badge bad">misaligned: {esc(" + ".join(which))}</span>'
    return '<span class="badge ok">clean</span>'


def _suspects(
    suspects: Sequence[LedgerEntry],
    index: Mapping[str, Mapping[str, Any]],
    media: Mapping[str, SampleMedia],
    dataset: Path | None,
    truth: bool = True,
    folder: Path | None = None,
) -> str:
    if not suspects:
        return section("suspects", "Suspected misaligned triplets", _missing("no scored samples"))
    rows = []
    for rank, row in enumerate(suspects, start=1):
        record = index.get(row.id)
        labels = _describe(record)
        sample = media.get(row.id)
        frames = audio = captions = '<span class="small">not available</span>'
        if sample is not None:
            if sample.frames is not None:
                frames = img(
                    thumbnail_strip(sample.frames), f"frames of {visible(row.id)}", "strip"
                )
            if sample.audio is not None and not sample.audio.any():
                audio = '<span class="small">no audio (silent clip)</span>'
            elif sample.audio is not None:
                audio = audio_player(wav_bytes(sample.audio, sample.sample_rate))
            if sample.captions:
                items = "".join(f"<li>{esc(c)}</li>" for c in dict.fromkeys(sample.captions))
                captions = f'<ul class="caps">{items}</ul>'
        described = "<br>".join(
            f"<span class='small'>{part}</span>"
            for part in (labels, _origin(record, folder))
            if part
        )
        rows.append(
            [
                str(rank),
                f"<bdi><b>{esc(visible(row.id))}</b></bdi><br>{described}",
                f"{row.score:+.3f}<br><span class='small'>{row.conflicts}/{row.seen} conflicts</span>",
                *([_truth_badge(record)] if truth else []),
                frames,
                audio,
                captions,
            ]
        )
    note = (
        "Lowest ledger scores first. Labels and the ground-truth flag come from the dataset index "
        "(never seen by training); the labels describe the video."
    )
    if dataset is None:
        note += " No dataset was found for this run, so media and ground truth are missing."
    elif not truth:
        note = f"Lowest ledger scores first. No ground-truth column: {NO_TRUTH}."
    if folder is not None:
        note += " Each file links to its source video at the clip's span (#t=start,end)."
    headers = ["#", "sample", "score", "ground truth", "frames", "audio", "captions"]
    body = table(
        [h for h in headers if truth or h != "ground truth"],
        rows,
        numeric=(0,),
        css_class="suspects",
    )
    return section("suspects", "Top suspected misaligned triplets", body, note)


def _describe(record: Mapping[str, Any] | None) -> str:
    """HTML of what each modality shows according to the index ('video 3 up; audio 3 (theo);
    caption 5 up'), with the parts that disagree with the video in red."""
    if not record:
        return "not in the dataset index"
    if not any(record.get(k) is not None for k in CLASS_LABELS):
        return ""  # an unlabelled clip (e.g. imported from one's own videos)

    def part(label: str, value: object, mismatch: bool) -> str:
        text = f"{esc(label)} {esc(value)}"
        return f'<span class="mis">{text}</span>' if mismatch else text

    digit, motion = record.get("digit"), record.get("motion")
    parts = [f"video {esc(digit)} {esc(motion)}" if motion is not None else f"video {esc(digit)}"]
    if "audio_digit" in record:
        speaker = f" ({record['speaker']})" if "speaker" in record else ""
        parts.append(
            part("audio", f"{record['audio_digit']}{speaker}", record["audio_digit"] != digit)
        )
    if "caption_digit" in record:
        said = " ".join(str(record[k]) for k in ("caption_digit", "caption_motion") if k in record)
        differs = record["caption_digit"] != digit or record.get("caption_motion", motion) != motion
        parts.append(part("caption", said, differs))
    return "; ".join(parts)


def _origin(record: Mapping[str, Any] | None, folder: Path | None = None) -> str:
    """HTML of where the clip came from ('file clips/a.mp4; 12.5-17.5 s'), when recorded; the
    file links to its span (`source_href`) when ``folder`` is the one it was imported from."""
    if not record:
        return ""
    parts = []
    for key in ("source", "file"):
        if record.get(key) is not None:
            name = f"<bdi>{esc(visible(str(record[key])))}</bdi>"
            href = source_href(folder, record) if key == "file" and folder is not None else None
            if href is not None:
                name = f'<a href="{esc(href)}" target="_blank" rel="noopener noreferrer">{name}</a>'
            parts.append(f"{key} {name}")
    span = [record.get(k) for k in ("start", "end")]
    if any(v is not None for v in span):
        start, end = (_seconds(v) for v in span)
        parts.append(f"{esc(start)}&ndash;{esc(end)} s")
    return "; ".join(parts)


def source_href(folder: Path, record: Mapping[str, Any]) -> str | None:
    """The ``file:`` URI of a clip's ``file`` inside ``folder`` (resolved) with a W3C media
    fragment for its span (``file:///videos/a%20b.mp4#t=12.5,17.5``), which a browser plays from
    start to end; None unless the name stays inside the folder (`inside`) and is a file there."""
    file = record.get("file")
    path = inside(folder, file) if isinstance(file, str) else None
    if path is None or not path.is_file():
        return None
    start, end = _time(record.get("start")), _time(record.get("end"))
    if start is None:
        return path.as_uri()
    span = _npt(start) + (f",{_npt(end)}" if end is not None and end > start else "")
    return f"{path.as_uri()}#t={span}"


def _time(value: object) -> float | None:
    """A time in seconds when ``value`` is a finite number >= 0, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if 0.0 <= value < math.inf else None


def _npt(seconds: float) -> str:
    """Seconds as a media fragment writes them (``12.5``: no exponent, at most 3 decimals)."""
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


def _seconds(value: object) -> str:
    """A time in seconds as the index gives it (numbers shortened, anything else as text)."""
    if value is None:
        return "?"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:g}"
    return visible(str(value))


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""How a spreadsheet cell that it would run as a formula starts."""


def _inert(value: object) -> object:
    """A text cell a spreadsheet would run as a formula (``=HYPERLINK(...)``), quoted with a
    leading ``'``; numbers and other text as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def _scores_csv(ledger: Sequence[LedgerEntry], index: Mapping[str, Mapping[str, Any]]) -> str:
    """rank, ledger columns, then index labels, ground-truth flags and where each clip came
    from (source, start, end) when the index has them."""
    label_cols = [k for k in LABEL_FIELDS if any(k in index.get(r.id, {}) for r in ledger)]
    flag_cols = [k for k in NOISE_FLAGS if any(k in index.get(r.id, {}) for r in ledger)]
    meta_cols = [k for k in META_FIELDS if any(k in index.get(r.id, {}) for r in ledger)]
    header = ["rank", "id", "score", "conflicts", "seen", "last_step", *label_cols, *flag_cols]
    if flag_cols:
        header.append("misaligned")
    header += meta_cols
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for rank, r in enumerate(ledger, start=1):
        rec = index.get(r.id, {})
        row: list[object] = [
            rank,
            _inert(r.id),
            f"{r.score:.6f}",
            r.conflicts,
            r.seen,
            r.last_step,
        ]
        row += [_inert(rec.get(k, "")) for k in label_cols]
        row += [int(bool(rec[k])) if k in rec else "" for k in flag_cols]
        if flag_cols:
            flag = noise_flag(rec)
            row.append("" if flag is None else int(flag))
        row += [_inert(rec.get(k, "")) for k in meta_cols]
        writer.writerow(row)
    return buf.getvalue()

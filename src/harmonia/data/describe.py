"""Human-readable text of a dataset summary (printed by build, `data info` and the demo)."""

from __future__ import annotations

from typing import Any

from harmonia.errors import DataError, first_line


def describe(summary: dict[str, Any]) -> str:
    """A few lines: sizes and noise per split, media spec, bytes, build time, checksum.

    A summary that lacks or mangles a field (a dataset from elsewhere) is a one-line DataError.
    """
    try:
        return _describe(summary)
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as err:
        raise DataError(
            f"summary.json lacks or mangles a field ({type(err).__name__}: {first_line(err)})"
        ) from None


def _describe(summary: dict[str, Any]) -> str:
    if "import" in summary:
        return _describe_import(summary)
    if "filter" in summary:
        return _describe_filtered(summary)
    media = summary["media"]
    build = summary.get("build", {})
    source = build.get("source", {})
    lines = [
        f"AV-MNIST-T: {summary['samples']} samples, {summary['bytes'] / 1e6:.1f} MB, "
        f"built in {build.get('seconds', float('nan')):.1f} s with {build.get('workers', '?')} workers",
        f"{_media_line(media)}; {media['captions_per_clip']} captions per clip",
        f"  source: {source.get('kind', '?')} {source.get('root') or ''} "
        f"({source.get('mnist_count', '?')} images, {source.get('recordings', '?')} recordings)".rstrip(),
    ]
    for name, split in summary["splits"].items():
        noise = split["noise"]
        digits = " ".join(f"{d}:{n}" for d, n in split["digits"].items())
        lines.append(
            f"  {name:<5} {split['samples']:>6} samples in {len(split['shards'])} shards, "
            f"speakers {','.join(split['speakers'])}, images [{split['image_range'][0]}, {split['image_range'][1]}), "
            f"misaligned {noise['misaligned']:.3f} (configured {noise['configured']:.2f}; "
            f"text {noise['text']:.3f}, audio {noise['audio']:.3f})"
        )
        lines.append(f"        digits {digits}")
    lines.append(f"  checksum {summary['checksum']}")
    if source.get("warning"):
        lines.append(f"  {source['warning']}")
    return "\n".join(lines)


def _media_line(media: dict[str, Any]) -> str:
    return (
        f"  media: {media['frames']} frames @ {media['fps']} fps, {media['height']}x{media['width']} "
        f"H.264; {media['audio_samples']} audio samples @ {media['sample_rate']} Hz AAC"
    )


def _describe_import(summary: dict[str, Any]) -> str:
    """An imported dataset: clips per split, clips without audio, what was skipped and why."""
    info = summary["import"]
    lines = [
        f"imported: {summary['samples']} clips, {summary['bytes'] / 1e6:.1f} MB, "
        f"in {info.get('seconds', float('nan')):.1f} s with {info.get('workers', '?')} workers "
        "(no labels)",
        _media_line(summary["media"]),
    ]
    for name, split in summary["splits"].items():
        lines.append(
            f"  {name:<5} {split['samples']:>6} clips in {len(split['shards'])} shards, "
            f"{split['without_audio']} without audio"
        )
    skipped = info["skipped"]
    lines.append(f"  skipped {skipped}" + (":" if skipped else ""))
    for reason, count in info["skipped_by_reason"].items():
        lines.append(f"    {count:>6} x {reason}")
    for item in info["skipped_items"][:10]:
        lines.append(f"    e.g. {item['source']}: {item['reason']}")
    lines.append(f"  checksum {summary['checksum']}")
    return "\n".join(lines)


def _describe_filtered(summary: dict[str, Any]) -> str:
    """A copy written by `harmonia data filter`: what it came from and what it left out."""
    info = summary["filter"]
    lines = [
        f"filtered copy: {summary['samples']} clips, {summary['bytes'] / 1e6:.1f} MB, of "
        f"{info['source']}: {info['dropped']} of split {info['split']!r} dropped ({info['rule']}; "
        f"ledger {info['ledger']}; listed in {info['manifest']})",
        _media_line(summary["media"]),
    ]
    for name, split in summary["splits"].items():
        lines.append(f"  {name:<5} {split['samples']:>6} clips in {len(split['shards'])} shards")
    lines.append(f"  checksum {summary['checksum']}")
    return "\n".join(lines)

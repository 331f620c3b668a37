"""`harmonia data build | fetch | info | verify`: make, download, inspect and check AV-MNIST-T."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from harmonia.errors import ConfigError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "data", help="build AV-MNIST-T, import your own videos, fetch and inspect datasets"
    )
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")

    def no_action(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=no_action)

    build = sub.add_parser("build", help="build AV-MNIST-T shards from MNIST + FSDD")
    build.add_argument("--out", required=True, help="output dataset directory")
    add_source_option(build)
    add_build_options(build)
    build.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    build.add_argument(
        "--workers", type=int, default=None, help="render processes (default: CPUs, max 8)"
    )
    build.add_argument("--quiet", action="store_true", help="no progress bar")
    build.set_defaults(func=run_build)

    fetch = sub.add_parser("fetch", help="download MNIST + FSDD to the cache, verifying SHA-256")
    fetch.add_argument(
        "--dest",
        default=None,
        help="target directory (default: $HARMONIA_CACHE or ~/.cache/harmonia/source)",
    )
    fetch.add_argument(
        "--mnist-url", default=None, help="base URL of the MNIST files (or $HARMONIA_MNIST_URL)"
    )
    fetch.add_argument(
        "--fsdd-url", default=None, help="base URL of the FSDD recordings (or $HARMONIA_FSDD_URL)"
    )
    fetch.add_argument(
        "--only", choices=("mnist", "fsdd"), default=None, help="fetch one of the two"
    )
    fetch.add_argument("--jobs", type=int, default=8, help="parallel downloads")
    fetch.add_argument("--quiet", action="store_true", help="no progress bar")
    fetch.set_defaults(func=run_fetch)

    imp = sub.add_parser(
        "import",
        help="import your own videos + captions (a folder and a table, or WebDataset shards)",
        description="Cut clips at a model's media spec from your own videos and captions and "
        "write them as a dataset `harmonia train --data` reads (docs/your-data.md).",
    )
    imp.add_argument(
        "folder",
        nargs="?",
        default=None,
        help="folder of media files (with --captions or --subtitles)",
    )
    imp.add_argument(
        "--captions",
        default=None,
        help="captions table (.csv or .jsonl): path (relative to FOLDER), caption and/or "
        "captions, optional start, end, key; other columns are kept as metadata",
    )
    imp.add_argument(
        "--subtitles",
        action="store_true",
        help="one clip per timed caption of each video in FOLDER (a .srt/.vtt beside it, or "
        "its subtitle stream), neighbouring captions as extra candidates",
    )
    imp.add_argument(
        "--neighbours",
        type=int,
        default=1,
        help="with --subtitles: neighbouring captions on each side added as candidates",
    )
    imp.add_argument(
        "--shards",
        nargs="+",
        default=None,
        help="video2dataset-style .tar shards ({key}.mp4 + {key}.txt/.json), brace patterns allowed",
    )
    imp.add_argument("--out", required=True, help="output dataset directory")
    add_import_options(imp)
    imp.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    imp.add_argument("--workers", type=int, default=None, help="processes (default: CPUs, max 8)")
    imp.add_argument("--quiet", action="store_true", help="no progress bar")
    imp.set_defaults(func=run_import)

    keep = sub.add_parser(
        "filter",
        help="copy a run's dataset without the training clips its ledger suspects most",
        description="The clean-your-data loop: write the dataset RUN trained on again, without "
        "the most suspected training clips of RUN/ledger.csv, with a manifest of what was dropped "
        "(dropped.csv); then train on the copy.",
    )
    keep.add_argument("run_dir", help="a finished training run (its ledger.csv)")
    keep.add_argument("--out", required=True, help="output dataset directory")
    keep.add_argument("--data", default=None, help="the dataset (default: the run's data.dir)")
    rule = keep.add_mutually_exclusive_group(required=True)
    rule.add_argument(
        "--drop-top", type=int, default=None, metavar="K", help="drop the K most suspected"
    )
    rule.add_argument(
        "--drop-fraction",
        type=float,
        default=None,
        metavar="F",
        help="drop the most suspected F of the split",
    )
    rule.add_argument(
        "--below",
        type=float,
        default=None,
        metavar="SCORE",
        help="drop clips whose ledger score is below SCORE",
    )
    keep.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    keep.set_defaults(func=run_filter)

    info = sub.add_parser("info", help="print a built dataset's summary")
    info.add_argument("dir", help="dataset directory")
    info.add_argument("--json", action="store_true", help="print summary.json as is")
    info.set_defaults(func=run_info)

    verify = sub.add_parser("verify", help="re-hash every shard member against the index")
    verify.add_argument("dir", help="dataset directory")
    verify.set_defaults(func=run_verify)


def add_source_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        default=None,
        help="source directory (mnist/ + fsdd/recordings/), or 'builtin'; "
        "default: $HARMONIA_DATA, then the fetch cache",
    )


def add_build_options(parser: argparse.ArgumentParser) -> None:
    """Options of a build, shared by `data build` and `demo` (defaults = the default dataset)."""
    from harmonia.data import BuildConfig

    d = BuildConfig()  # one source of truth for every default
    g = parser.add_argument_group("dataset")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--train", type=int, default=d.sizes["train"], help="training samples")
    g.add_argument("--val", type=int, default=d.sizes["val"], help="validation samples")
    g.add_argument("--test", type=int, default=d.sizes["test"], help="test samples")
    g.add_argument(
        "--split",
        choices=("train", "val", "test"),
        default=None,
        help="put every speaker and image into this one split (size from its option)",
    )
    g.add_argument("--noise", type=float, default=d.noise, help="fraction of misaligned triplets")
    g.add_argument(
        "--noise-mix",
        default=",".join(f"{w:g}" for w in d.noise_mix),
        help="weights TEXT,AUDIO,BOTH of what a misaligned triplet gets wrong",
    )
    g.add_argument(
        "--noise-splits",
        default=",".join(d.noise_splits),
        help="comma-separated splits that get noise",
    )
    g.add_argument(
        "--extra",
        type=int,
        default=d.extra,
        help="size of the second, noisier source (split 'extra')",
    )
    g.add_argument(
        "--extra-noise",
        type=float,
        default=d.extra_noise,
        help="misaligned fraction of the extra source",
    )
    g.add_argument("--shard-size", type=int, default=d.shard_size, help="samples per shard")
    add_clip_shape(g, d.media)
    g.add_argument(
        "--captions", type=int, default=d.media.captions_per_clip, help="captions per clip"
    )


def add_clip_shape(group: Any, media: Any) -> None:
    """--frames, --fps, --size and --sample-rate, with ``media``'s values as defaults."""
    group.add_argument("--frames", type=int, default=media.frames)
    group.add_argument("--fps", type=int, default=media.fps)
    group.add_argument(
        "--size", type=int, default=media.height, help="frame height and width in pixels"
    )
    group.add_argument("--sample-rate", type=int, default=media.sample_rate)


def clip_shape(args: argparse.Namespace, **more: Any) -> Any:
    """The MediaSpec of the options `add_clip_shape` added (plus ``more`` fields)."""
    from harmonia.data import MediaSpec

    return MediaSpec(
        frames=args.frames,
        fps=args.fps,
        height=args.size,
        width=args.size,
        sample_rate=args.sample_rate,
        **more,
    )


def add_import_options(parser: argparse.ArgumentParser) -> None:
    """How `data import` cuts and splits clips (defaults: the shipped models' clip)."""
    from harmonia.data.importer import ImportOptions
    from harmonia.data.transcode import FITS

    d = ImportOptions()  # one source of truth for every default
    g = parser.add_argument_group("clips")
    add_clip_shape(g, d.media)
    g.add_argument(
        "--fit", choices=FITS, default=d.fit, help="crop to fill the frame, or pad to keep all"
    )
    g.add_argument("--video-stream", type=int, default=d.video_stream, help="which video stream")
    g.add_argument("--audio-stream", type=int, default=d.audio_stream, help="which audio stream")
    g.add_argument("--val-fraction", type=float, default=d.val_fraction)
    g.add_argument("--test-fraction", type=float, default=d.test_fraction)
    g.add_argument("--seed", type=int, default=d.seed, help="seeds the split of keys")
    g.add_argument("--shard-size", type=int, default=d.shard_size, help="clips per shard")


def run_import(args: argparse.Namespace) -> int:
    from harmonia.data import describe
    from harmonia.data.builder import default_workers
    from harmonia.data.import_inputs import (
        shard_candidates,
        subtitle_candidates,
        table_candidates,
    )
    from harmonia.data.importer import ImportOptions, import_dataset

    with_folder = args.captions is not None or args.subtitles
    if (args.folder is None) == (args.shards is None) or (args.folder is not None) != with_folder:
        raise ConfigError(
            "give FOLDER with --captions TABLE or --subtitles, or --shards PATTERN..."
        )
    if args.captions is not None and args.subtitles:
        raise ConfigError("--captions and --subtitles are two ways to caption FOLDER: pick one")
    if args.neighbours < 0:
        raise ConfigError(f"--neighbours must be >= 0, got {args.neighbours}")
    options = ImportOptions(
        media=clip_shape(args),
        fit=args.fit,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        shard_size=args.shard_size,
        video_stream=args.video_stream,
        audio_stream=args.audio_stream,
    )
    if args.subtitles:
        inputs = subtitle_candidates(Path(args.folder), neighbours=args.neighbours)
        describe_inputs = {"folder": args.folder, "subtitles": True, "neighbours": args.neighbours}
    elif args.folder is not None:
        inputs = table_candidates(Path(args.folder), Path(args.captions))
        describe_inputs = {"folder": args.folder, "captions": args.captions}
    else:
        inputs = shard_candidates(args.shards)
        describe_inputs = {"shards": list(args.shards)}
    summary = import_dataset(
        inputs,
        args.out,
        options,
        describe=describe_inputs,
        folder=args.folder,
        overwrite=args.overwrite,
        workers=default_workers() if args.workers is None else args.workers,
        progress=not args.quiet,
    )
    print(describe(summary))
    print(f"written to {args.out}")
    return 0


def build_config(args: argparse.Namespace) -> Any:
    """BuildConfig from parsed options (ConfigError names a bad option)."""
    from harmonia.data import BuildConfig

    try:
        mix = tuple(float(x) for x in args.noise_mix.split(","))
    except ValueError:
        raise ConfigError(
            f"--noise-mix must be TEXT,AUDIO,BOTH numbers, got {args.noise_mix!r}"
        ) from None
    if len(mix) != 3:
        raise ConfigError(
            f"--noise-mix must be three numbers TEXT,AUDIO,BOTH, got {args.noise_mix!r}"
        )
    media = clip_shape(args, captions_per_clip=args.captions)
    return BuildConfig(
        seed=args.seed,
        sizes={"train": args.train, "val": args.val, "test": args.test},
        single_split=args.split,
        noise=args.noise,
        noise_mix=(mix[0], mix[1], mix[2]),
        noise_splits=tuple(s for s in args.noise_splits.split(",") if s),
        extra=args.extra,
        extra_noise=args.extra_noise,
        shard_size=args.shard_size,
        media=media,
    )


def load_source(name: str | None, *, allow_builtin: bool) -> Any:
    """Resolve the source and shout if it is the built-in (not speech) fallback."""
    from harmonia.data import resolve_source
    from harmonia.data.builtin import WARNING

    source = resolve_source(name, allow_builtin=allow_builtin)
    if source.kind == "builtin":
        bar = "!" * 78
        print(f"{bar}\n{WARNING}\n{bar}", file=sys.stderr)
    return source


def run_build(args: argparse.Namespace) -> int:
    from harmonia.data import build_dataset, describe
    from harmonia.data.staging import check_output

    config = build_config(args)
    check_output(Path(args.out), args.overwrite)  # before loading (and warning about) the source
    source = load_source(args.source, allow_builtin=False)
    summary = build_dataset(
        config,
        source,
        args.out,
        overwrite=args.overwrite,
        workers=args.workers,
        progress=not args.quiet,
    )
    print(describe(summary))
    print(f"written to {args.out}")
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    from harmonia.data.fetch import fetch_sources

    dest = fetch_sources(
        args.dest,
        mnist_url=args.mnist_url,
        fsdd_url=args.fsdd_url,
        only=args.only,
        jobs=args.jobs,
        progress=not args.quiet,
    )
    print(f"sources ready in {dest} (use --source {dest} or set HARMONIA_DATA)")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from harmonia.data import describe, load_summary

    summary = load_summary(args.dir)
    print(json.dumps(summary, indent=2) if args.json else describe(summary))
    return 0


def run_filter(args: argparse.Namespace) -> int:
    from harmonia.data import describe
    from harmonia.data.filtering import FilterRule, filter_dataset
    from harmonia.evaluation.run_dir import RunDir

    run = RunDir(args.run_dir)
    if not run.ledger_path.is_file():
        raise ConfigError(f"{run.ledger_path} not found: the run has no ledger to filter with")
    summary = filter_dataset(
        run.require_dataset(args.data),
        run.ledger_path,
        args.out,
        FilterRule(top=args.drop_top, fraction=args.drop_fraction, below=args.below),
        overwrite=args.overwrite,
    )
    print(describe(summary))
    print(f"written to {args.out} (dropped clips listed in {Path(args.out) / 'dropped.csv'})")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from harmonia.data.verify import verify_dataset

    problems = verify_dataset(args.dir)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem(s) in {args.dir}", file=sys.stderr)
        return 1
    print(f"{args.dir}: every member matches the index; checksum ok")
    return 0

"""The study's shared datasets: each built once, reused by every run and by a resumed study.

A dataset is rebuilt only when its directory holds none or one built with other options. The
scaling study trains on the clean source plus the noisier `extra` source; the trainer reads one
split, so `extra_view` writes a view of a dataset whose `train` split is train + extra (index and
summary rewritten, shards linked, nothing re-encoded). Clean training records come first in the
view, so "the first N training clips" are the same clips in the dataset and in its view.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from harmonia.data import BuildConfig, SourceData, build_dataset
from harmonia.data.config import EXTRA_SPLIT
from harmonia.data.index import INDEX_FILE, SUMMARY_FILE, load_summary, read_index, write_index
from harmonia.data.shards import SHARD_FOLDER
from harmonia.experiments.plan import MERGED_SPLIT, DatasetSpec

VIEW_MARK = "view_of"


def build_config(spec: DatasetSpec) -> BuildConfig:
    """The build options of a study dataset (default media; noise only in `train`)."""
    return BuildConfig(
        seed=spec.seed,
        sizes={"train": spec.train, "val": spec.val, "test": spec.test},
        noise=spec.noise,
        extra=spec.extra,
        extra_noise=spec.extra_noise,
    )


def ensure_built(
    spec: DatasetSpec, root: Path, source: SourceData, *, workers: int = 2, progress: bool = True
) -> tuple[Path, bool]:
    """The dataset of `spec` under `root` (built unless an identical one is there); (path, built)."""
    out = root / spec.key
    config = build_config(spec)
    if (out / SUMMARY_FILE).is_file():
        built = load_summary(out).get("build", {})
        if built.get("options") == config.to_dict() and built.get("source") == source.description:
            return out, False
    build_dataset(config, source, out, overwrite=out.exists(), workers=workers, progress=progress)
    return out, True


def extra_view(dataset: Path, out: Path) -> Path:
    """A dataset view at `out` whose `train` split is `dataset`'s train + extra splits."""
    summary = load_summary(dataset)
    if (out / SUMMARY_FILE).is_file() and load_summary(out).get(VIEW_MARK) == {
        "dataset": str(dataset.resolve()),
        "checksum": summary["checksum"],
    }:
        return out
    splits = summary.get("splits", {})
    if EXTRA_SPLIT not in splits:
        raise ValueError(f"{dataset} has no '{EXTRA_SPLIT}' split to merge")
    records = read_index(dataset)
    train = [r for r in records if r.get("split") == "train"]
    extra = [r for r in records if r.get("split") == EXTRA_SPLIT]
    others = [r for r in records if r.get("split") not in ("train", EXTRA_SPLIT)]
    merged = [{**r, "split": MERGED_SPLIT} for r in (*train, *extra)]

    view = dict(summary)
    first, second = splits["train"], splits[EXTRA_SPLIT]
    view_splits: dict[str, Any] = {
        k: v for k, v in splits.items() if k not in ("train", EXTRA_SPLIT)
    }
    view_splits[MERGED_SPLIT] = {
        "samples": len(merged),
        "shards": [*first.get("shards", []), *second.get("shards", [])],
        "merged_from": {"train": first, EXTRA_SPLIT: second},
    }
    view["splits"] = view_splits
    view[VIEW_MARK] = {"dataset": str(dataset.resolve()), "checksum": summary["checksum"]}

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / SHARD_FOLDER).symlink_to((dataset / SHARD_FOLDER).resolve(), target_is_directory=True)
    write_index(tmp / INDEX_FILE, [*merged, *others])
    (tmp / SUMMARY_FILE).write_text(json.dumps(view, indent=2) + "\n", encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out

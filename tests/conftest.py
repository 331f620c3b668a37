"""Shared fixtures. `tiny_dataset`: a small AV-MNIST-T built once per test session, for every area."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

from harmonia.data import BuildConfig, SourceData, build_dataset, resolve_source
from harmonia.data.sources import BUILTIN, ENV_DATA

REPO_ROOT = Path(__file__).resolve().parents[1]

# Property tests check behaviour, not speed: a loaded 2-core CI machine must not fail them on
# hypothesis' per-example deadline.
settings.register_profile("harmonia", deadline=None)
settings.load_profile("harmonia")
TINY_SIZES = {"train": 48, "val": 16, "test": 16}
TINY_NOISE = 0.25


def source_location() -> str:
    """$HARMONIA_DATA, else ../shared/data beside the repo, else the built-in fallback."""
    if os.environ.get(ENV_DATA):
        return os.environ[ENV_DATA]
    shared = REPO_ROOT.parent / "shared" / "data"
    return str(shared) if shared.is_dir() else BUILTIN


@pytest.fixture(scope="session")
def real_source_dir() -> Path | None:
    """The real source directory (mnist/ + fsdd/), or None when only the built-in set exists."""
    location = source_location()
    return None if location == BUILTIN else Path(location).resolve()


@pytest.fixture(scope="session")
def data_source() -> SourceData:
    """The source media (real MNIST + FSDD when available), loaded once."""
    return resolve_source(source_location())


@pytest.fixture(scope="session")
def tiny_config() -> BuildConfig:
    """48 train / 16 val / 16 test samples, 25% of training triplets misaligned, seed 0."""
    return BuildConfig(seed=0, sizes=dict(TINY_SIZES), noise=TINY_NOISE)


@pytest.fixture(scope="session")
def tiny_dataset(
    tmp_path_factory: pytest.TempPathFactory, data_source: SourceData, tiny_config: BuildConfig
) -> Path:
    """Path of a built tiny AV-MNIST-T (index.jsonl, summary.json, shards/). Treat it as read-only."""
    out = tmp_path_factory.mktemp("avmnist") / "tiny"
    build_dataset(tiny_config, data_source, out, workers=2, progress=False)
    return out


@pytest.fixture(scope="session")
def sharded(tmp_path_factory: pytest.TempPathFactory, data_source: SourceData) -> Path:
    """The tiny dataset in shards of 8 clips (6 training shards: enough for 2 ranks), for the
    streaming tests. Treat it as read-only."""
    out = tmp_path_factory.mktemp("stream") / "tiny8"
    config = BuildConfig(seed=0, sizes=dict(TINY_SIZES), noise=TINY_NOISE, shard_size=8)
    build_dataset(config, data_source, out, workers=2, progress=False)
    return out

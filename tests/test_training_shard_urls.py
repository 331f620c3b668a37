"""`data.train_shards`: training streams shards from URLs the user writes, outside the dataset.

The dataset's training shards are copied to a folder outside it (what a user uploads to a
bucket) and read back through a brace pattern and through ``pipe:`` commands: the same shards in
the same order train the same weights as streaming the dataset's own shards, across an epoch
boundary, and a run stopped mid-epoch resumes bit-exactly. Commands that fail are errors naming
the URL; shard names from a dataset's own files are still never run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from dataset_edits import rewrite_index
from faults import child_env
from harmonia.cli import main
from harmonia.data import shard_urls
from harmonia.data.shard_urls import ShardUrlError, expand_urls
from harmonia.data.streaming import StreamingDataset
from harmonia.errors import ConfigError, DataError
from harmonia.training.batches import LoaderFailure
from harmonia.training.config import load_train_config
from harmonia.training.stream import StreamBatches
from launch import harmonia_torchrun
from test_training_stream import STREAM, max_deviation, rewind

SHARDS = 6
"""Training shards of the `sharded` dataset (8 clips each)."""


@pytest.fixture(scope="module")
def bucket(sharded: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The training shards copied outside the dataset."""
    out = tmp_path_factory.mktemp("bucket")
    for shard in sorted((sharded / "shards").glob("train-*.tar")):
        shutil.copy(shard, out / shard.name)
    return out


def braces(bucket: Path) -> str:
    return f"{bucket}/train-{{000000..{SHARDS - 1:06d}}}.tar"


def train(data: Path, out: Path, shards: str | None, *extra: str) -> int:
    urls = [] if shards is None else [f"data.train_shards={shards}", "data.train_samples=48"]
    return main(["train", "demo", "--data", str(data), *STREAM, *urls, "--out", str(out), *extra])


@pytest.fixture(scope="module")
def own_run(sharded: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """14 steps streaming the dataset's own shards (12 per epoch: across the boundary)."""
    run = tmp_path_factory.mktemp("own") / "run"
    assert train(sharded, run, None) == 0
    return run


@pytest.fixture(scope="module")
def url_run(sharded: Path, bucket: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same run reading the copies through a brace pattern."""
    run = tmp_path_factory.mktemp("urls") / "run"
    assert train(sharded, run, braces(bucket)) == 0
    return run


def test_a_brace_pattern_outside_the_dataset_trains_like_its_own_shards(
    url_run: Path, own_run: Path
) -> None:
    assert json.loads((url_run / "summary.json").read_text())["steps"] == 14
    assert max_deviation(url_run, own_run) == 0.0


def test_pipe_commands_train_like_the_datasets_own_shards(
    sharded: Path, bucket: Path, own_run: Path, tmp_path: Path
) -> None:
    log = tmp_path / "opened.txt"
    names = [f"train-{n:06d}.tar" for n in range(SHARDS)]
    shards = "::".join(f"pipe:echo {name} >> {log}; cat {bucket / name}" for name in names)
    assert train(sharded, tmp_path / "run", shards) == 0
    assert set(log.read_text().split()) == set(names)  # every command ran
    assert max_deviation(tmp_path / "run", own_run) == 0.0


def test_a_run_on_shard_urls_resumes_bit_exactly(
    sharded: Path, bucket: Path, url_run: Path, tmp_path: Path
) -> None:
    half = tmp_path / "half"
    shutil.copytree(url_run, half)
    rewind(half, 9)  # resume at step 9, cross the epoch boundary at 12
    assert train(sharded, half, braces(bucket), "--resume") == 0
    assert max_deviation(half, url_run) == 0.0


def test_under_torchrun_the_ranks_split_url_shards_like_the_datasets_own(
    sharded: Path, bucket: Path, tmp_path: Path
) -> None:
    """2 ranks, 3 shards each, 6 steps per epoch either way: 8 steps give the same weights."""

    def torchrun(out: Path, *extra: str) -> None:
        args = ["train", "demo", "--data", str(sharded), *STREAM, "--out", str(out)]
        more = ["train.steps=8", "data.num_workers=1", *extra]
        proc = harmonia_torchrun(2, [*args, *more], child_env())
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]

    torchrun(tmp_path / "own")
    torchrun(tmp_path / "urls", f"data.train_shards={braces(bucket)}", "data.train_samples=48")
    assert max_deviation(tmp_path / "urls", tmp_path / "own") == 0.0


def test_an_epoch_on_urls_is_train_samples_over_ranks_and_batch(
    sharded: Path, bucket: Path
) -> None:
    urls = expand_urls(braces(bucket))
    dataset = StreamingDataset(sharded, batch_size=4, buffer=16, urls=urls, num_samples=48)
    assert StreamBatches(dataset, world_size=2).steps_in(0) == 6
    assert StreamBatches(dataset, world_size=1, num_workers=2).steps_in(0) == 12
    stream = StreamBatches(dataset, world_size=1, seed=3)
    batches = [next(stream) for _ in range(13)]
    assert (stream.epoch, stream.consumed) == (1, 1)
    ids = [i for batch in batches[:12] for i in batch["id"]]
    assert len(ids) == len(set(ids)) == 48  # each clip once per epoch
    state = stream.state_dict()
    stream.close()
    other = StreamBatches(
        StreamingDataset(sharded, batch_size=4, buffer=16, urls=urls[::-1], num_samples=48)
    )
    other.load_state_dict(state)  # another shard list: its epoch starts over
    assert (other.epoch, other.consumed) == (1, 0)
    with pytest.raises(ValueError, match="cannot feed 2 ranks"):
        StreamBatches(
            StreamingDataset(sharded, batch_size=4, urls=urls[:1], num_samples=8), world_size=2
        )


def test_expanding_shard_urls(bucket: Path) -> None:
    first, second = (str(bucket / f"train-{n:06d}.tar") for n in (0, 1))
    assert expand_urls(f"{bucket}/train-{{000000..000001}}.tar") == [first, second]
    assert expand_urls(f"{bucket}/train-00000[01].tar::pipe:cat {{a,b}}.tar") == [
        first,
        second,
        "pipe:cat a.tar",
        "pipe:cat b.tar",
    ]
    assert len(expand_urls(f"{bucket}/*.tar")) == SHARDS
    with pytest.raises(ShardUrlError, match="matches no file"):
        expand_urls(f"{bucket}/*.tgz")
    with pytest.raises(ShardUrlError, match=r"train-000006\.tar' is not a file"):
        expand_urls(f"{bucket}/train-{{000000..000099}}.tar")
    with pytest.raises(ShardUrlError, match="empty pattern"):
        expand_urls(f"{first}::")


def test_a_corrupt_shard_at_a_url_gives_skip_records_naming_it(
    sharded: Path, bucket: Path, tmp_path: Path
) -> None:
    cut = tmp_path / "cut.tar"
    cut.write_bytes((bucket / "train-000000.tar").read_bytes()[:5000])
    urls = [f"pipe:cat {cut}", *expand_urls(braces(bucket))[1:]]
    items = list(StreamingDataset(sharded, shuffle=False, urls=urls, num_samples=48))
    skipped = [item["skipped"] for item in items if "skipped" in item]
    assert [s["shard"] for s in skipped] == [urls[0]]
    assert "unreadable" in skipped[0]["reason"]
    assert len(items) - len(skipped) == 40  # the other five shards


def test_a_failing_command_stops_training_with_its_url(
    sharded: Path, bucket: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = expand_urls(braces(bucket))
    failing = f"pipe:cat {bucket}/missing.tar"
    dataset = StreamingDataset(sharded, shuffle=False, urls=[failing, *good], num_samples=48)
    with pytest.raises(DataError, match=f"shard {failing}: the command exited with status 1"):
        list(dataset)
    stream = StreamBatches(
        StreamingDataset(sharded, batch_size=4, urls=["pipe:exit 3", *good], num_samples=48),
        num_workers=2,
    )
    with pytest.raises(LoaderFailure, match="shard pipe:exit 3: the command exited with status 3"):
        for _ in range(12):
            next(stream)
    assert train(sharded, tmp_path / "run", f"{bucket}/train-*.tar::pipe:exit 3") == 2
    assert "shard pipe:exit 3: the command exited with status 3" in capsys.readouterr().err


def test_a_missing_local_shard_is_refused_before_training(
    sharded: Path, bucket: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train(sharded, tmp_path / "run", f"{bucket}/train-{{000000..000006}}.tar") == 2
    err = capsys.readouterr().err
    assert "data.train_shards:" in err and "train-000006.tar' is not a file" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_vocabulary_still_needs_the_training_captions_in_the_dataset(
    sharded: Path, bucket: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    local = tmp_path / "small-files"
    shutil.copytree(sharded, local, ignore=shutil.ignore_patterns("train-*.tar"))
    assert train(local, tmp_path / "run", braces(bucket)) == 2
    assert "the vocabulary is built from the captions of split 'train'" in capsys.readouterr().err


def test_the_datasets_own_shard_names_are_never_opened_by_webdataset(
    sharded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hostile index and summary that agree on a ``pipe:`` shard: it is a missing file."""
    pwned = tmp_path / "PWNED"
    first = "shards/train-000000.tar"
    command = f"pipe:touch {pwned}; cat {sharded / first}"

    def hostile(records: list[dict[str, Any]]) -> None:
        for record in records:
            if record["shard"] == first:
                record["shard"] = command

    out = rewrite_index(sharded, tmp_path / "hostile", hostile)
    summary = json.loads((out / "summary.json").read_text())
    listed = summary["splits"]["train"]["shards"]
    listed[listed.index(first)] = command
    (out / "summary.json").write_text(json.dumps(summary))

    def refuse(url: str, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"webdataset opened {url}")

    monkeypatch.setattr(shard_urls.wds, "gopen", refuse)
    items = list(StreamingDataset(out, "train", shuffle=False))
    skipped = [item["skipped"] for item in items if "skipped" in item]
    assert [s["shard"] for s in skipped] == [command]
    assert len(items) - len(skipped) == 40
    assert not pwned.exists()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["data.train_shards=/b/train-{0..9}.tar", "data.train_samples=10"], "data.train_shards"),
        (["data.streaming=true", "data.train_shards=/b/train-{0..9}.tar"], "data.train_samples"),
        (["data.streaming=true", "data.train_samples=10"], "data.train_samples"),
        (
            ["data.streaming=true", "data.train_shards=/b/x.tar", "data.train_samples=0"],
            "data.train_samples",
        ),
    ],
)
def test_shard_url_config_errors_name_the_field(overrides: list[str], field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_train_config("demo", ["data.cache=false", *overrides])


def test_shard_urls_are_set_from_the_command_line() -> None:
    value = "pipe:aws s3 cp s3://b/train-{000000..000009}.tar -::/local/extra-*.tar"
    overrides = ["data.streaming=true", "data.cache=false", "data.train_samples=10000"]
    cfg = load_train_config("demo", [*overrides, f"data.train_shards={value}"])
    assert (cfg.data.train_shards, cfg.data.train_samples) == (value, 10000)

"""`data.streaming: true`: training reads the shards in sequence and still resumes bit-exactly.

A resumed run rebuilds its epoch's stream (same seed and epoch: the same shard order, worker
split and shuffle buffer) and replays the batches before its saved position; these tests stop
runs in the middle of an epoch and finish them across the epoch boundary, with DropToken on and
two loader workers, in one process and under torchrun.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from faults import child_env
from harmonia.cli import main
from harmonia.data.streaming import StreamingDataset
from harmonia.errors import ConfigError
from harmonia.training.config import load_train_config
from harmonia.training.partition import stream_batches
from harmonia.training.stream import StreamBatches
from launch import harmonia_torchrun

STREAM = [
    "data.streaming=true",
    "data.cache=false",
    "data.batch_size=4",
    "data.stream_buffer=16",
    "data.num_workers=2",
    "model.modalities.video.drop_token=0.25",
    "model.modalities.audio.drop_token=0.25",
    "train.steps=14",
    "train.checkpoint_every=3",
    "train.keep_last=5",
    "train.log_every=1",
    "train.eval_every=0",
    "train.progress=false",
    "eval.batch_size=16",
]


def rewind(run: Path, to_step: int) -> None:
    """Make a finished run look as if it had stopped at the checkpoint of ``to_step``."""
    shutil.rmtree(run / "model")
    (run / "summary.json").unlink()
    (run / "ledger.csv").unlink(missing_ok=True)
    for checkpoint in (run / "checkpoints").iterdir():
        if int(checkpoint.name.split("-")[1]) > to_step:
            shutil.rmtree(checkpoint)


def max_deviation(a: Path, b: Path) -> float:
    got, want = (load_file(r / "model" / "model.safetensors") for r in (a, b))
    return max(float((got[k] - want[k]).abs().max()) for k in want)


def test_a_streamed_run_resumes_bit_exactly_across_an_epoch_boundary(
    sharded: Path, tmp_path: Path
) -> None:
    full, half = tmp_path / "full", tmp_path / "half"
    args = ["train", "demo", "--data", str(sharded), *STREAM]
    assert main([*args, "--out", str(full)]) == 0
    shutil.copytree(full, half)
    rewind(half, 9)  # 12 steps per epoch: resume at 9, cross the boundary at 12
    assert main([*args, "--out", str(half), "--resume"]) == 0
    assert max_deviation(half, full) == 0.0


def test_every_rank_stops_an_epoch_after_the_poorest_ranks_full_batches(sharded: Path) -> None:
    dataset = StreamingDataset(sharded, "train", batch_size=4, buffer=16, seed=3)
    stream = StreamBatches(dataset, world_size=1, num_workers=0, seed=3)
    assert stream.steps_in(0) == 12  # 6 shards of 8 clips, one rank: 48 // 4
    uneven = [8, 8, 8, 8, 8, 3]
    assert stream_batches(uneven, 4, world_size=2) == 4  # ranks get 24 and 19 samples: 6, 4
    batches = [next(stream) for _ in range(13)]
    assert (stream.epoch, stream.consumed) == (1, 1)
    ids = [i for batch in batches[:12] for i in batch["id"]]
    assert len(ids) == len(set(ids)) == 48  # each clip once per epoch
    stream.close()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["data.cache=true"], "data.cache"),
        (["data.drop_suspects.fraction=0.2"], "data.drop_suspects.fraction"),
        (
            ["harmonize.ledger.enabled=true", "harmonize.sampler.enabled=true"],
            "harmonize.sampler.enabled",
        ),
    ],
)
def test_what_needs_random_access_is_refused_with_streaming(
    overrides: list[str], field: str
) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_train_config("demo", ["data.streaming=true", "data.cache=false", *overrides])


def test_a_streamed_torchrun_run_resumes_bit_exactly(sharded: Path, tmp_path: Path) -> None:
    """2 ranks, 3 shards each: the run stopped at step 3 of 6 per epoch equals the whole run."""
    full, half = tmp_path / "full", tmp_path / "half"

    def torchrun(*extra: str) -> None:
        args = ["train", "demo", "--data", str(sharded), *STREAM, *extra]
        proc = harmonia_torchrun(2, args, child_env())
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]

    torchrun("--out", str(full), "train.steps=8", "data.num_workers=1")
    shutil.copytree(full, half)
    rewind(half, 3)
    torchrun("--out", str(half), "--resume", "train.steps=8", "data.num_workers=1")
    assert max_deviation(half, full) == 0.0
    assert (
        torch.load(next((half / "checkpoints").iterdir()) / "state.pt", weights_only=True)[
            "world_size"
        ]
        == 2
    )

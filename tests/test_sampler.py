"""CurriculumSampler: determinism, rank splits, exact mid-epoch resume, clean-first preference."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset

from harmonia.errors import CheckpointError, ConfigError
from harmonia.harmonization.ledger import ConflictLedger
from harmonia.harmonization.sampler import CurriculumSampler


def make_ids(n: int) -> list[str]:
    return [f"clip-{i:05d}" for i in range(n)]


def scored_ledger(ids: list[str], scores: np.ndarray) -> ConflictLedger:
    ledger = ConflictLedger()
    ledger.update(ids, scores, 0)
    return ledger


def two_groups(n: int) -> tuple[list[str], ConflictLedger, set[int]]:
    """Even indices clean (cosine 0.8), odd ones conflicting (-0.8)."""
    ids = make_ids(n)
    scores = np.where(np.arange(n) % 2 == 0, 0.8, -0.8)
    return ids, scored_ledger(ids, scores), set(range(0, n, 2))


def test_same_seed_and_epoch_give_the_same_order() -> None:
    ids, ledger, _ = two_groups(300)
    first = list(CurriculumSampler(ids, ledger, seed=5))
    assert first == list(CurriculumSampler(ids, ledger, seed=5))
    assert first != list(CurriculumSampler(ids, ledger, seed=6))
    sampler = CurriculumSampler(ids, ledger, seed=5, epochs=10)
    sampler.set_epoch(3)
    third = list(sampler)
    assert third != first
    again = CurriculumSampler(ids, ledger, seed=5, epochs=10)
    again.set_epoch(3)
    assert list(again) == third


def test_an_epoch_is_a_permutation_of_the_dataset() -> None:
    ids, ledger, _ = two_groups(257)
    sampler = CurriculumSampler(ids, ledger, seed=1)
    order = list(sampler)
    assert len(sampler) == 257 and sorted(order) == list(range(257))
    assert list(sampler) == order  # without set_epoch the epoch replays, like DistributedSampler


@pytest.mark.parametrize(("n", "world"), [(100, 4), (103, 4), (7, 3), (5, 5)])
def test_ranks_are_disjoint_and_cover_the_dataset(n: int, world: int) -> None:
    ids, ledger, _ = two_groups(n)
    shares = [list(CurriculumSampler(ids, ledger, rank=r, world_size=world)) for r in range(world)]
    assert {len(share) for share in shares} == {-(-n // world)}
    counts = Counter(i for share in shares for i in share)
    assert set(counts) == set(range(n))
    padding = -(-n // world) * world - n
    assert sum(c - 1 for c in counts.values()) == padding  # only padding repeats
    dropped = [
        list(CurriculumSampler(ids, ledger, rank=r, world_size=world, drop_last=True))
        for r in range(world)
    ]
    flat = [i for share in dropped for i in share]
    assert len(flat) == len(set(flat)) == (n // world) * world
    assert {len(share) for share in dropped} == {n // world}


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 60), st.integers(1, 6), st.integers(0, 3), st.integers(0, 2**31))
def test_rank_split_property(n: int, world: int, epoch: int, seed: int) -> None:
    ids, ledger, _ = two_groups(n)
    shares = []
    for rank in range(world):
        sampler = CurriculumSampler(ids, ledger, rank=rank, world_size=world, seed=seed, epochs=2)
        sampler.set_epoch(epoch)
        shares.append(list(sampler))
    assert {i for share in shares for i in share} == set(range(n))
    assert len({len(share) for share in shares}) == 1


def test_resume_mid_epoch_continues_the_uninterrupted_sequence() -> None:
    ids = make_ids(120)
    rng = np.random.default_rng(0)
    ledger = scored_ledger(ids, rng.uniform(-1, 1, 120))
    uninterrupted = CurriculumSampler(ids, ledger, seed=3, epochs=4, rank=1, world_size=2)
    interrupted = CurriculumSampler(ids, ledger, seed=3, epochs=4, rank=1, world_size=2)
    epoch0 = list(uninterrupted)
    iterator = iter(interrupted)
    head = [next(iterator) for _ in range(23)]
    # the ledger moves during the epoch; the resumed epoch must not be re-drawn from it
    ledger.update(ids[:60], rng.uniform(-1, 1, 60), 5)
    buffer = io.BytesIO()
    torch.save(interrupted.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    resumed = CurriculumSampler(ids, ledger, seed=3, epochs=4, rank=1, world_size=2)
    resumed.load_state_dict(state)
    resumed.set_epoch(0)  # a resumed loop calls set_epoch as usual: position is kept
    assert head + list(resumed) == epoch0
    for sampler in (uninterrupted, resumed):
        sampler.set_epoch(1)
    assert list(resumed) == list(uninterrupted)


def test_consumed_count_rewinds_to_what_the_trainer_used() -> None:
    ids, ledger, _ = two_groups(50)
    sampler = CurriculumSampler(ids, ledger, seed=2)
    full = list(CurriculumSampler(ids, ledger, seed=2))
    iterator = iter(sampler)
    for _ in range(30):  # workers prefetched 30 indices, the trainer used 16
        next(iterator)
    resumed = CurriculumSampler(ids, ledger, seed=2)
    resumed.load_state_dict(sampler.state_dict(consumed=16))
    assert list(resumed) == full[16:]
    with pytest.raises(ValueError, match="consumed"):
        sampler.state_dict(consumed=51)


def test_state_before_any_iteration_round_trips() -> None:
    ids, ledger, _ = two_groups(20)
    sampler = CurriculumSampler(ids, ledger, seed=9, epochs=3)
    sampler.set_epoch(2)
    resumed = CurriculumSampler(ids, ledger, seed=9, epochs=3)
    resumed.load_state_dict(sampler.state_dict())
    assert resumed.epoch == 2 and list(resumed) == list(sampler)


def test_resuming_with_another_layout_is_refused() -> None:
    ids, ledger, _ = two_groups(40)
    state = CurriculumSampler(ids, ledger, world_size=2).state_dict()
    with pytest.raises(CheckpointError, match="world_size"):
        CurriculumSampler(ids, ledger, world_size=4).load_state_dict(state)
    state["order"] = torch.full((20,), 99)
    state["planned"] = True
    with pytest.raises(CheckpointError, match="outside the dataset"):
        CurriculumSampler(ids, ledger, world_size=2).load_state_dict(state)


class IndexDataset(Dataset[int]):
    def __len__(self) -> int:
        return 90

    def __getitem__(self, index: int) -> int:
        return index


def test_works_with_several_dataloader_workers() -> None:
    ids, ledger, _ = two_groups(90)
    expected = list(CurriculumSampler(ids, ledger, seed=4))
    loader = DataLoader(
        IndexDataset(),
        batch_size=8,
        sampler=CurriculumSampler(ids, ledger, seed=4),
        num_workers=2,
        multiprocessing_context="fork",
    )
    assert torch.cat(list(loader)).tolist() == expected


def test_clean_samples_come_first_early_and_uniformly_at_the_end() -> None:
    ids, ledger, clean = two_groups(2000)
    sampler = CurriculumSampler(ids, ledger, seed=0, sharpness=4.0, warmup=0.5, epochs=4)

    def clean_share_of_first_half() -> float:
        order = list(sampler)
        return sum(i in clean for i in order[:1000]) / 1000

    early = clean_share_of_first_half()
    sampler.set_epoch(1)  # progress 0.25: half-way through the warm-up
    middle = clean_share_of_first_half()
    sampler.set_epoch(2)  # progress 0.5: warm-up over, uniform
    late = clean_share_of_first_half()
    # weight ratio exp(4 * 1.6) ~ 600 early; exp(2 * 1.6) ~ 25 half-way; 1 at the end.
    # Under a uniform order the share is 0.5 with a standard deviation of about 0.011.
    assert early > 0.95
    assert 0.75 < middle < early
    assert 0.45 < late < 0.55


def test_uniform_at_the_end_does_not_depend_on_the_ledger() -> None:
    ids, ledger, _ = two_groups(300)
    informed = CurriculumSampler(ids, ledger, seed=11, epochs=2, warmup=0.5)
    blank = CurriculumSampler(ids, ConflictLedger(), seed=11, epochs=2, warmup=0.5)
    assert list(informed) != list(blank)
    for sampler in (informed, blank):
        sampler.set_epoch(1)
    assert informed.beta() == 0.0
    assert list(informed) == list(blank)


def test_explicit_progress_overrides_the_epoch_schedule() -> None:
    ids, ledger, _ = two_groups(100)
    sampler = CurriculumSampler(ids, ledger, sharpness=3.0, warmup=0.5, epochs=100)
    sampler.set_epoch(0, progress=0.25)
    assert sampler.progress() == 0.25 and sampler.beta() == pytest.approx(1.5)
    list(sampler)
    sampler.set_epoch(0, progress=0.4)  # the order of this epoch is drawn: progress stays
    assert sampler.progress() == 0.25
    with pytest.raises(ValueError, match="progress"):
        sampler.set_epoch(1, progress=1.5)


def test_unseen_samples_get_the_median_score_as_a_neutral_prior() -> None:
    ids = make_ids(1500)
    seen_scores = np.linspace(-0.9, 0.9, 1000)
    ledger = scored_ledger(ids[:1000], seen_scores)  # ids[1000:] never seen
    sampler = CurriculumSampler(ids, ledger, seed=0, sharpness=4.0)
    weights = sampler.sampling_weights()
    median = float(torch.tensor(seen_scores).median())
    torch.testing.assert_close(weights[1000:], torch.full((500,), np.exp(4.0 * median)).double())
    position = np.argsort(list(sampler))  # position of each index in the epoch
    top, bottom, unseen = position[750:1000], position[:250], position[1000:]
    assert top.mean() < unseen.mean() < bottom.mean()
    fixed = CurriculumSampler(ids, ledger, prior=-0.9, sharpness=4.0)
    assert float(fixed.sampling_weights()[-1]) == pytest.approx(np.exp(-3.6))


def test_num_samples_draws_a_subset_that_favours_clean_samples() -> None:
    ids, ledger, clean = two_groups(400)
    subset = list(CurriculumSampler(ids, ledger, num_samples=100, seed=1))
    assert len(subset) == len(set(subset)) == 100
    assert sum(i in clean for i in subset) > 90


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"ids": []}, "ids"),
        ({"ids": ["a", "a"]}, "ids"),
        ({"sharpness": -1.0}, "sharpness"),
        ({"warmup": 1.5}, "warmup"),
        ({"shape": "step"}, "shape"),
        ({"epochs": 0}, "epochs"),
        ({"prior": 2.0}, "prior"),
        ({"world_size": 0}, "world_size"),
        ({"rank": 2, "world_size": 2}, "rank"),
        ({"num_samples": 0}, "num_samples"),
        ({"num_samples": 11}, "num_samples"),
        ({"num_samples": 2, "world_size": 3, "drop_last": True}, "num_samples"),
    ],
)
def test_invalid_options_name_the_field(options: dict, field: str) -> None:
    arguments: dict = {"ids": make_ids(10), "ledger": ConflictLedger(), **options}
    with pytest.raises(ConfigError, match=rf"CurriculumSampler: {field}\b"):
        CurriculumSampler(**arguments)

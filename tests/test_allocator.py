"""keep_freed_memory: freed CPU memory is reused without page faults; user settings win."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from harmonia.allocator import _glibc, keep_freed_memory, user_has_chosen

_REUSE = textwrap.dedent(
    """
    import resource, sys
    import torch
    from harmonia.allocator import keep_freed_memory
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    def faults_of_one_step():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        # a step's temporaries: 4 x 40 MiB, each above glibc's largest dynamic mmap threshold
        temporaries = [torch.ones(10 << 20) for _ in range(4)]
        del temporaries
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    faults = [faults_of_one_step() for _ in range(8)]
    print(max(faults[-3:]))  # the steady state, once the heap holds a step's worth
    """
)


def _faults(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUN"))}
    done = subprocess.run(
        [sys.executable, "-c", _REUSE, mode], env=env, capture_output=True, text=True, check=True
    )
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(_glibc() is None, reason="the setting is glibc's; elsewhere it is a no-op")
def test_freed_temporaries_are_reused_without_page_faults() -> None:
    default, kept = _faults("default"), _faults("keep")
    assert default > 10_000  # every block is mapped afresh each step: one fault per 4 KiB page
    assert kept < default / 20


@pytest.mark.parametrize(
    "env",
    [
        {"MALLOC_TRIM_THRESHOLD_": "0"},
        {"MALLOC_MMAP_THRESHOLD_": "131072"},
        {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"},
    ],
)
def test_a_threshold_set_in_the_environment_wins(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert user_has_chosen()
    assert keep_freed_memory() is False


def test_unrelated_tunables_are_not_a_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    assert not user_has_chosen()


@pytest.mark.parametrize("limit", [0, -1, 2**31])
def test_a_limit_outside_a_c_int_is_refused(limit: int) -> None:
    with pytest.raises(ValueError, match="limit must be between 1 and"):
        keep_freed_memory(limit)

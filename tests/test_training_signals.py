"""Stop requests and the non-finite step guard."""

from __future__ import annotations

import os
import signal

import pytest

from harmonia.training.guard import BadStepGuard
from harmonia.training.signals import StopRequest


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_sets_the_flag_and_handlers_are_restored(sig: signal.Signals) -> None:
    before = signal.getsignal(sig)
    with StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), sig)
        assert stop.requested and stop.signal_name == sig.name
    assert signal.getsignal(sig) == before


def test_second_signal_interrupts() -> None:
    with StopRequest(), pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)


def test_guard_counts_consecutive_bad_steps() -> None:
    guard = BadStepGuard(limit=3)
    assert guard.is_finite([1.0, 2.0]) and not guard.is_finite([1.0, float("nan")])
    assert not guard.update(False) and not guard.update(False)
    assert not guard.update(True)
    assert not guard.update(False) and not guard.update(False)
    assert guard.update(False)
    assert guard.total == 5 and guard.consecutive == 3
    restored = BadStepGuard(limit=3)
    restored.load_state_dict(guard.state_dict())
    assert restored.state_dict() == {"consecutive": 3, "total": 5}
    assert "3 consecutive steps" in str(guard.error(7, "RUN/checkpoints/step-00000006"))

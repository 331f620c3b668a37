"""Graceful stop: SIGINT/SIGTERM ask the loop to checkpoint at the end of the step and exit 0."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Context manager: while active, the first SIGINT/SIGTERM sets `requested` instead of
    killing the process; a second one raises KeyboardInterrupt (the user insists). Previous
    handlers come back on exit. Outside the main thread it only offers `request()`."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def request(self, name: str = "request") -> None:
        """Ask the loop to stop after the current step."""
        self.requested = True
        self.signal_name = self.signal_name or name

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.request(signal.Signals(signum).name)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def worker_signal_handlers(worker_id: int = 0) -> None:
    """Data-loader worker init: stopping is the main process's business, so workers ignore
    SIGINT and SIGTERM (Ctrl-C and ``kill -TERM -PGID`` reach the whole process group, as does
    a batch system's stop). The main process then checkpoints at the end of its step, with its
    loader intact: under torchrun every rank must draw its next batch to agree on that step.
    Workers still end when the loader shuts down, and by themselves when the main process dies.
    """
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)

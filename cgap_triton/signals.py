"""SIGINT and SIGTERM: a run stops at a step boundary with a checkpoint, never in the middle of a write.

Handlers only record the signal (:class:`SignalLatch`); the code checks the latch at points where stopping is
safe. An exception thrown from a handler could land anywhere: inside a module being imported (leaving it half
initialised, so that the next use fails with an unrelated error), or inside a write.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; where a checkpoint could be made, it was saved at a step boundary."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    @property
    def exit_status(self) -> int:
        return 128 + self.signum  # what a shell reports for a process the signal killed: 130, 143


class SignalLatch:
    """A signal handler that remembers the first SIGINT/SIGTERM; later ones (a burst) change nothing."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum

    def check(self) -> None:
        """Raise :class:`Interrupted` if a signal arrived: call it where stopping leaves nothing half done."""
        if self.signum is not None:
            raise Interrupted(self.signum)


def install(handler: Callable) -> dict:
    """Route SIGINT and SIGTERM to ``handler``; returns the previous handlers for :func:`restore`."""
    return {s: signal.signal(s, handler) for s in SIGNALS}


def restore(previous: dict) -> None:
    for s, handler in previous.items():
        signal.signal(s, handler)

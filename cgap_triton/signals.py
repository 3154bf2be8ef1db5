"""SIGINT and SIGTERM: a run stops at a step boundary with a checkpoint, never in the middle of a write."""

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


def raise_interrupted(signum, frame) -> None:
    raise Interrupted(signum)


def install(handler: Callable) -> dict:
    """Route SIGINT and SIGTERM to ``handler``; returns the previous handlers for :func:`restore`."""
    return {s: signal.signal(s, handler) for s in SIGNALS}


def restore(previous: dict) -> None:
    for s, handler in previous.items():
        signal.signal(s, handler)

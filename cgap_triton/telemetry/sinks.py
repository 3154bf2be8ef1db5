"""Telemetry: a small protocol (``log_metrics``, ``log_event``, ``close``) with jsonl and stdout sinks.

The rich dashboard (``telemetry.dashboard``) is a third sink. Sinks only read what they are given (typed
events from ``telemetry.events``, metric dicts); the trainer owns all state.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Protocol, TextIO

from .events import (
    CheckpointSaved,
    Compiled,
    CompileFallback,
    Compiling,
    Evaluated,
    Event,
    GrowthStopped,
    PhaseChanged,
    PruningStopped,
    StructuralChange,
)


class Sink(Protocol):
    def log_metrics(self, metrics: dict[str, Any]) -> None: ...

    def log_event(self, event: Event) -> None: ...

    def close(self) -> None: ...


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class JsonlSink:
    """metrics.jsonl: one line per logged step (``"kind": "step"``) and per event (``"kind": "event"``)."""

    def __init__(self, path: Path, append: bool = False, truncate_to: int | None = None):
        # Never through a symbolic link: the run folder's files must not write anywhere else.
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if append else os.O_TRUNC)
        fd = os.open(path, flags, 0o644)
        if append and truncate_to is not None and os.fstat(fd).st_size > truncate_to:
            os.ftruncate(fd, truncate_to)  # lines logged after the checkpoint we resume from: logged again
        self.file = os.fdopen(fd, "a" if append else "w", buffering=1)

    def flush(self) -> None:
        self.file.flush()

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        self.file.write(json.dumps(_clean({"kind": "step", "time": time.time(), **metrics})) + "\n")

    def log_event(self, event: Event) -> None:
        self.file.write(json.dumps(_clean({"kind": "event", "time": time.time(), **event.record()})) + "\n")

    def close(self) -> None:
        self.file.close()


def describe_event(event: Event) -> str:
    """One human line per event, shared by the stdout sink and the dashboard."""
    match event:
        case StructuralChange():
            verb = "grew" if event.kind == "grow" else "pruned"
            parts = [f"{g} {a}→{b} ({b - a:+d})" for g, (a, b) in event.change.items()]
            shown = ", ".join(parts[:4]) + (f", … {len(parts) - 4} more" if len(parts) > 4 else "")
            units = sum(abs(b - a) for a, b in event.change.values())
            return f"{verb} {units} units: {shown}; params {event.params:,}"
        case PhaseChanged():
            return f"phase {event.from_phase} → {event.to}"
        case GrowthStopped() | PruningStopped():
            return f"{event.kind.replace('_', ' ')}: {event.reason}"
        case Compiling():
            return f"compiling {event.reason} (backend {event.backend})"
        case CompileFallback():
            return f"WARNING: compiled model fell back to eager {event.reason}: {event.detail}"
        case Compiled():
            return f"compiled {event.reason} in {event.seconds:.1f}s (compilation {event.count})"
        case Evaluated():
            return f"epoch {event.epoch} val_accuracy {event.val_accuracy:.4f}"
        case CheckpointSaved():
            return f"checkpoint saved: {event.path}"
    rest = " ".join(f"{k}={v}" for k, v in event.record().items() if k not in ("event", "step", "epoch"))
    return f"{event.kind} {rest}".strip()


class StdoutSink:
    """Plain, greppable lines: one per logged step and one per event."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stdout

    def log_metrics(self, m: dict[str, Any]) -> None:
        self.stream.write(
            f"step {m['step']:>6} epoch {m['epoch']:>6.2f} phase {m['phase']:<9} loss {m['loss']:.4f} "
            f"train_acc {m['train_accuracy']:.3f} val_acc {m['val_accuracy']:.3f} lr {m['lr']:.4g} "
            f"params {m['params']:,} img/s {m['images_per_second']:.0f}\n"
        )
        self.stream.flush()

    def log_event(self, event: Event) -> None:
        step = "-" if event.step is None else event.step
        self.stream.write(f"[step {step}] {describe_event(event)}\n")
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


class Telemetry:
    """Fan-out to several sinks."""

    def __init__(self, sinks: list[Sink]):
        self.sinks = sinks

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        for s in self.sinks:
            s.log_metrics(metrics)

    def log_event(self, event: Event) -> None:
        for s in self.sinks:
            s.log_event(event)

    def flush(self) -> None:
        for s in self.sinks:
            flush = getattr(s, "flush", None)
            if flush is not None:
                flush()

    def close(self) -> None:
        for s in self.sinks:
            s.close()

"""The phases of a run and its events, defined once: producers build them, sinks dispatch on their type.

Each event kind is a small frozen dataclass; :meth:`Event.record` is its metrics.jsonl line (``"event"`` is
the kind, then the fields under their contract names: a field whose metadata names ``json`` is written under
that name, a field left at ``None`` is left out).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar


class Phase(StrEnum):
    """seed → grow → stabilize → prune → finetune, in this order (``done`` is not a phase: the run ended)."""

    SEED = "seed"
    GROW = "grow"
    STABILIZE = "stabilize"
    PRUNE = "prune"
    FINETUNE = "finetune"

    @property
    def label(self) -> str:
        return PHASE_LABELS[self.value]


PHASES: tuple[str, ...] = tuple(p.value for p in Phase)
PHASE_LABELS = {"seed": "seed", "grow": "grow", "stabilize": "stabilise", "prune": "prune", "finetune": "fine-tune"}


def _json(name: str) -> Any:
    return field(metadata={"json": name})


@dataclass(frozen=True, kw_only=True)
class Event:
    KIND: ClassVar[str] = ""
    step: int | None = None

    @property
    def kind(self) -> str:
        return self.KIND

    def record(self) -> dict[str, Any]:
        """The metrics.jsonl fields of this event (without ``kind`` and ``time``, which the jsonl sink adds)."""
        out: dict[str, Any] = {"event": self.kind}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.default is None:
                continue
            if f.metadata.get("json", f.name) is not None:
                out[f.metadata.get("json", f.name)] = value
        return out


@dataclass(frozen=True, kw_only=True)
class Started(Event):
    """The run started (or, with ``resumed``, continued from its checkpoint)."""

    KIND: ClassVar[str] = "start"
    resumed: bool = field(default=False, metadata={"json": None})
    device: str
    world_size: int
    recipe: str
    data: str
    widths: dict[str, int]
    widths_full: dict[str, int]
    widths_seed: dict[str, int]
    params: int
    params_full: int
    macs: int
    macs_full: int
    phase: str
    total_steps: int
    steps_per_epoch: int
    epochs: int
    # Channels that keep their width in a model by name or import path, by producing module, with why.
    fixed: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "resume" if self.resumed else "start"


@dataclass(frozen=True, kw_only=True)
class StructuralChange(Event):
    """Widths changed: ``change`` maps each changed group to ``[width before, width after]``."""

    KIND: ClassVar[str] = ""
    epoch: float
    change: dict[str, list[int]]
    widths: dict[str, int]
    params: int
    macs: int
    params_reduction: float
    changes: int  # structural changes so far, this one included


@dataclass(frozen=True, kw_only=True)
class Grown(StructuralChange):
    KIND: ClassVar[str] = "grow"


@dataclass(frozen=True, kw_only=True)
class Pruned(StructuralChange):
    KIND: ClassVar[str] = "prune"


STRUCTURAL_CHANGES: dict[str, type[StructuralChange]] = {"grow": Grown, "prune": Pruned}


@dataclass(frozen=True, kw_only=True)
class PhaseChanged(Event):
    KIND: ClassVar[str] = "phase"
    from_phase: str = _json("from")
    to: str
    epoch: float | None = None


@dataclass(frozen=True, kw_only=True)
class GrowthStopped(Event):
    KIND: ClassVar[str] = "growth_stopped"
    reason: str
    epoch: float | None = None


@dataclass(frozen=True, kw_only=True)
class PruningStopped(Event):
    KIND: ClassVar[str] = "pruning_stopped"
    reason: str
    epoch: float | None = None


@dataclass(frozen=True, kw_only=True)
class Compiling(Event):
    KIND: ClassVar[str] = "compiling"
    reason: str
    backend: str


@dataclass(frozen=True, kw_only=True)
class Compiled(Event):
    KIND: ClassVar[str] = "compile"
    reason: str
    seconds: float
    count: int
    graphs: int | None = None


@dataclass(frozen=True, kw_only=True)
class CompileFallback(Event):
    KIND: ClassVar[str] = "compile_fallback"
    reason: str
    detail: str


@dataclass(frozen=True, kw_only=True)
class Evaluated(Event):
    KIND: ClassVar[str] = "eval"
    epoch: int
    val_accuracy: float


@dataclass(frozen=True, kw_only=True)
class CheckpointSaved(Event):
    KIND: ClassVar[str] = "checkpoint"
    path: str


@dataclass(frozen=True, kw_only=True)
class SkippedStep(Event):
    KIND: ClassVar[str] = "skipped_step"
    reason: str


@dataclass(frozen=True, kw_only=True)
class Stopped(Event):
    KIND: ClassVar[str] = "stopped"
    reason: str


@dataclass(frozen=True, kw_only=True)
class Finished(Event):
    KIND: ClassVar[str] = "done"
    test_accuracy: float
    params: int
    params_reduction: float

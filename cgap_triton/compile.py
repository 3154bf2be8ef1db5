"""torch.compile across structural changes: reset and compile again after every width change.

Dynamo guards on parameter shapes, so a compiled model recompiles by itself after a width change,
until ``recompile_limit`` (8) changes — after which it silently runs eager. So the raw module is kept,
and after each structural change we call ``torch.compiler.reset()`` and compile afresh. Dynamo's
counters are read after each compilation: a frame that failed to compile (and so ran eager) or a graph
break is reported, never silently absorbed.

``policy``: ``always`` compiles every phase; ``never`` runs eager; ``auto`` compiles a phase only when
its expected steps are enough for the measured per-step gain to pay back the measured compile time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .recipe import CompileConfig


def _dynamo_counts() -> tuple[int, int, int, int]:
    from torch._dynamo.utils import counters

    frames = counters["frames"]
    return (counters["stats"]["unique_graphs"], frames["total"], frames["ok"], sum(counters["graph_break"].values()))


class CompiledModel:
    """Calls the raw module through a compiled wrapper that is rebuilt after every structural change."""

    def __init__(self, model: nn.Module, cfg: CompileConfig, log_event: Callable[[dict[str, Any]], None]):
        self.raw, self.cfg, self.log_event = model, cfg, log_event
        self.compiled: Callable | None = None
        self.compilations = 0
        self.compile_seconds = 0.0
        self.fallbacks = 0
        self._reason = "at start"
        self._pending_timing = False
        self._eager_step: float | None = None  # measured eager and compiled step times (for policy auto)
        self._compiled_step: float | None = None
        self.use_compiled = cfg.enabled and cfg.policy != "never"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.use_compiled:
            return self.raw(x)
        if self.compiled is None:
            self.compiled = torch.compile(
                self.raw, backend=self.cfg.backend, mode=None if self.cfg.mode == "default" else self.cfg.mode
            )
            self._before = _dynamo_counts()
            self._pending_timing = True
        return self.compiled(x)

    def step_started(self) -> float:
        return time.perf_counter()

    def step_finished(self, started: float, step: int) -> None:
        """Called after each full training step (forward, backward, update) with its start time."""
        elapsed = time.perf_counter() - started
        if not self.use_compiled:
            self._eager_step = elapsed if self._eager_step is None else 0.9 * self._eager_step + 0.1 * elapsed
            return
        if self._pending_timing:
            self._pending_timing = False
            graphs, total, ok, breaks = (a - b for a, b in zip(_dynamo_counts(), self._before))
            typical = self._compiled_step or self._eager_step or 0.0
            seconds = max(0.0, elapsed - typical)
            self.compilations += 1
            self.compile_seconds += seconds
            self.log_event(
                {
                    "event": "compile",
                    "step": step,
                    "reason": self._reason,
                    "seconds": seconds,
                    "count": self.compilations,
                    "graphs": graphs,
                    "graph_breaks": breaks,
                }
            )
            if total != ok or graphs == 0:
                self.fallbacks += 1
                self.log_event(
                    {
                        "event": "compile_fallback",
                        "step": step,
                        "reason": self._reason,
                        "detail": f"{total - ok} of {total} frames ran eager instead of compiled",
                    }
                )
            return
        self._compiled_step = elapsed if self._compiled_step is None else 0.9 * self._compiled_step + 0.1 * elapsed

    def invalidate(self, reason: str, steps_until_next_change: int | None = None) -> None:
        """After a structural change: drop compiled code; decide whether the next phase compiles."""
        self.compiled = None
        self._reason = reason
        if not self.cfg.enabled or self.cfg.policy == "never":
            return
        torch.compiler.reset()
        if self.cfg.policy == "auto":
            self.use_compiled = self._pays_back(steps_until_next_change)

    def _pays_back(self, steps: int | None) -> bool:
        if steps is None or self.compilations == 0 or self._eager_step is None or self._compiled_step is None:
            # Without both measurements yet: compile when the phase is long, run eager (and measure) otherwise.
            return steps is None or steps > 50 or self._eager_step is None
        gain = self._eager_step - self._compiled_step
        per_compile = self.compile_seconds / self.compilations
        return gain > 0 and gain * steps > per_compile

    def state(self) -> dict[str, Any]:
        return {
            "compilations": self.compilations,
            "compile_seconds": self.compile_seconds,
            "fallbacks": self.fallbacks,
            "compiled": self.use_compiled,
        }

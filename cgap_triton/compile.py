"""torch.compile across structural changes: reset and compile again after every width change.

Dynamo guards on parameter shapes, so a compiled model recompiles by itself after a width change,
until ``recompile_limit`` (8) changes — after which it silently runs eager (``dynamic=True`` does not
avoid it). So the raw module is kept, and after each structural change we call
``torch.compiler.reset()`` and compile afresh: one compilation per phase, whatever the number of
changes. Dynamo's counters are read after every compilation and at every logged step: a frame that
failed to compile (and so ran eager) is reported as a ``compile_fallback`` event, never absorbed.

``policy``:
- ``always`` compiles every phase; ``never`` runs eager;
- ``auto`` compiles a phase only when its expected steps pay back the compile time: it measures the
  eager step time (the first steps of the run are eager), the compiled step time and the seconds each
  compilation cost, and compiles when ``(eager − compiled) × steps > compile seconds``. Step times are
  steady-state ones: the first ``WARMUP_STEPS`` steps at new shapes (the run's start, every structural change,
  the steps after a compilation) are left out, since they carry cuDNN's algorithm search and the allocator's
  first requests. Only the first ``TIMED_STEPS`` steady steps of each phase (and the first compiled step) are
  timed: on a GPU the trainer synchronises around those steps alone (:attr:`CompiledModel.timing`), so the
  rest of the run queues work on the device without waiting for it. Until a
  compilation has been measured it assumes an optimistic gain (``OPTIMISTIC_GAIN`` of the eager step)
  and a typical compile time for the backend (``PRIOR_COMPILE_SECONDS``), so that a run whose phases
  are all too short never pays for a compilation just to find that out.

The compile time of a phase is the first compiled step's time (forward and backward graphs compile
then) less the typical step time measured around it.

Why not one compilation for every width: ``torch.compile(dynamic=True)`` with dynamo's
``force_parameter_static_shapes`` and ``force_nn_module_property_static_shapes`` off does keep the channel
counts symbolic under ``aot_eager`` (one compilation over twelve growth and pruning steps), but inductor's
convolution lowering specialises the weight shapes again: the quickstart under inductor recompiled after
every change (8 compilations of 16-28 s, then dynamo's recompile limit and an eager fallback), against 13
static ones of 5-10 s (torch 2.14.1, CPU, 2026-11-30). So each phase compiles afresh.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .recipe import CompileConfig
from .telemetry.events import Compiled, CompileFallback, Compiling, Event

EAGER_PROBE_STEPS = 8  # eager steps measured at the start of a run under policy "auto" (after the warm-up)
WARMUP_STEPS = 3  # steps at new shapes whose times are not typical (autotuning, first allocations)
TIMED_STEPS = 8  # steady steps timed per phase and mode (at least EAGER_PROBE_STEPS)
OPTIMISTIC_GAIN = 0.5  # before any measurement: compiled steps assumed to take half the eager time
PRIOR_COMPILE_SECONDS = {"inductor": 20.0, "aot_eager": 2.0, "eager": 0.5}  # forward+backward, small CNNs
DEFAULT_PRIOR_COMPILE_SECONDS = 10.0


def _dynamo_counts() -> tuple[int, int, int]:
    """(graphs compiled, frames that failed to compile, unsupported-construct reports) since start-up."""
    from torch._dynamo.utils import counters

    frames = counters["frames"]
    return (counters["stats"]["unique_graphs"], frames["total"] - frames["ok"], sum(counters["unimplemented"].values()))


class CompiledModel:
    """Calls the raw module through a compiled wrapper that is rebuilt after every structural change."""

    def __init__(
        self,
        model: nn.Module,
        cfg: CompileConfig,
        log_event: Callable[[Event], None],
        steps_left: Callable[[], int | None] = lambda: None,
    ):
        self.raw, self.cfg, self.log_event, self.steps_left = model, cfg, log_event, steps_left
        self.compiled: Callable | None = None
        self.compilations = 0
        self.compile_seconds = 0.0
        self.fallbacks = 0
        # Recent step times, seconds; medians are robust to the slow first step after a change or a
        # decision's evaluation.
        self._eager_times: deque[float] = deque(maxlen=32)
        self._compiled_times: deque[float] = deque(maxlen=32)
        self._reason = "at start"
        self._first_compiled_step = False
        self._counts = _dynamo_counts()
        enabled = cfg.enabled and cfg.policy != "never"
        self._probe = EAGER_PROBE_STEPS if cfg.policy == "auto" else 0
        self._warmup = WARMUP_STEPS  # steps left before times count again
        self._timed = TIMED_STEPS  # steady steps still to time in this phase and mode
        self.use_compiled = enabled and self._probe == 0

    @property
    def active(self) -> bool:
        return self.compiled is not None and self.use_compiled

    @property
    def timing(self) -> bool:
        """Whether the coming step's time is recorded (policy "auto"): the trainer synchronises around such steps."""
        if not (self.cfg.enabled and self.cfg.policy == "auto"):
            return False
        return (
            self._first_compiled_step
            or (self.use_compiled and self.compiled is None)
            or (not self._warmup and self._timed > 0)
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.use_compiled:
            return self.raw(x)
        if self.compiled is None:
            self.log_event(Compiling(reason=self._reason, backend=self.cfg.backend))
            mode = None if self.cfg.mode == "default" else self.cfg.mode
            self.compiled = torch.compile(self.raw, backend=self.cfg.backend, mode=mode)
            self._first_compiled_step = True
        return self.compiled(x)

    def step_finished(self, seconds: float, step: int) -> None:
        """Account one full training step (forward, backward, update) that took ``seconds``."""
        if not self.use_compiled:
            if self._warmup:
                self._warmup -= 1
                return
            if not self._timed:
                return
            self._timed -= 1
            self._eager_times.append(seconds)
            if self._probe:
                self._probe -= 1
                if self._probe == 0:  # probe done: does compiling the rest of this phase pay?
                    self.use_compiled = self.pays_back(self.steps_left())
            return
        if not self._first_compiled_step:
            if self._warmup:
                self._warmup -= 1
                return
            if self._timed:
                self._timed -= 1
                self._compiled_times.append(seconds)
            return
        self._first_compiled_step = False
        self._warmup = WARMUP_STEPS - 1  # this one was the compilation
        self._timed = TIMED_STEPS
        typical = self.compiled_step if self.compiled_step is not None else (self.eager_step or 0.0)
        cost = max(0.0, seconds - typical)
        self.compilations += 1
        self.compile_seconds += cost
        graphs = _dynamo_counts()[0] - self._counts[0]
        self.log_event(Compiled(step=step, reason=self._reason, seconds=cost, count=self.compilations, graphs=graphs))
        self.check_fallbacks(step)

    def check_fallbacks(self, step: int) -> None:
        """Report frames that ran eager since the last check (dynamo gave up on them)."""
        now = _dynamo_counts()
        failed, unsupported = now[1] - self._counts[1], now[2] - self._counts[2]
        self._counts = now
        if self.active and (failed or unsupported):
            self.fallbacks += 1
            self.log_event(
                CompileFallback(
                    step=step,
                    reason=self._reason,
                    detail=f"{failed} frame(s) failed to compile and ran eager; {unsupported} unsupported "
                    "construct(s); run with TORCH_LOGS=recompiles,graph_breaks to see where",
                )
            )

    def invalidate(self, reason: str, steps_until_next_change: int | None = None) -> None:
        """After a structural change: drop compiled code; decide whether the next phase compiles."""
        had_compiled = self.compiled is not None
        self.compiled = None
        self._reason = reason
        self._warmup = WARMUP_STEPS
        self._timed = TIMED_STEPS
        if had_compiled:
            torch.compiler.reset()
            self._counts = _dynamo_counts()
        if self.cfg.enabled and self.cfg.policy == "auto" and not self._probe:
            self.use_compiled = self.pays_back(steps_until_next_change)

    def reconsider(self, steps: int | None) -> None:
        """At a phase boundary without a structural change: under policy "auto", an eager run may start
        compiling when the new phase is long enough (the compiled code of the same shapes is reused)."""
        if self.cfg.enabled and self.cfg.policy == "auto" and not self._probe and not self.use_compiled:
            self.use_compiled = self.pays_back(steps)

    def pays_back(self, steps: int | None) -> bool:
        """Whether compiling now is expected to save time over ``steps`` steps (policy "auto")."""
        if steps is None:
            return True
        if self.eager_step is None:  # nothing measured yet: no compilation on a guess
            return False
        if self.compiled_step is not None and self.compilations:
            gain = self.eager_step - self.compiled_step
        else:
            gain = OPTIMISTIC_GAIN * self.eager_step
        if self.compilations:
            cost = self.compile_seconds / self.compilations
        else:
            cost = PRIOR_COMPILE_SECONDS.get(self.cfg.backend, DEFAULT_PRIOR_COMPILE_SECONDS)
        return gain > 0 and gain * steps > cost

    @property
    def eager_step(self) -> float | None:
        return statistics.median(self._eager_times) if self._eager_times else None

    @property
    def compiled_step(self) -> float | None:
        return statistics.median(self._compiled_times) if self._compiled_times else None

    def state(self) -> dict[str, Any]:
        return {
            "compilations": self.compilations,
            "compile_seconds": self.compile_seconds,
            "fallbacks": self.fallbacks,
            "compiled": self.active,
        }

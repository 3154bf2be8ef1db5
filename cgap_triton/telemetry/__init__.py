"""Telemetry: typed events and phases (``events``), the jsonl and stdout sinks (``sinks``), the live
dashboard (``dashboard``, a third sink) and the reports and plots drawn from a run folder (``report``)."""

from .events import PHASE_LABELS, PHASES, Event, Phase
from .sinks import JsonlSink, Sink, StdoutSink, Telemetry, describe_event

__all__ = [
    "PHASES",
    "PHASE_LABELS",
    "Event",
    "JsonlSink",
    "Phase",
    "Sink",
    "StdoutSink",
    "Telemetry",
    "describe_event",
]

"""The live terminal dashboard: a rich ``Live`` view of a run, fed only by telemetry.

It is a telemetry sink like the jsonl and stdout ones: ``log_metrics`` and ``log_event`` copy the few
numbers it shows into a small view model and return; rich's ``Live`` thread builds the picture from
that model at most ``refresh_per_second`` times a second. So the training loop never waits on
rendering, and nothing here can change what the trainer does.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

from .events import (
    PHASE_LABELS,
    PHASES,
    CheckpointSaved,
    Compiled,
    CompileFallback,
    Compiling,
    Evaluated,
    Event,
    Finished,
    GrowthStopped,
    PhaseChanged,
    PruningStopped,
    SkippedStep,
    Started,
    StructuralChange,
)
from .sinks import describe_event

PHASE_STYLES = {
    "seed": "bold white on grey30",
    "grow": "bold black on green3",
    "stabilize": "bold black on gold3",
    "prune": "bold white on red3",
    "finetune": "bold white on dodger_blue2",
    "done": "bold black on grey70",
}
# Events that change or explain the network's shape; the rest (checkpoints, evals) update other panels.
STRUCTURAL = (StructuralChange, PhaseChanged, GrowthStopped, PruningStopped, CompileFallback, SkippedStep)
EVENT_STYLES = {"grow": "green3", "prune": "red3", "phase": "bold", "compile_fallback": "bold red"}
SPARK_CHARS = "▁▂▃▄▅▆▇█"
GROUP_COLUMN_WIDTH = 54  # one column of group rows: name, bar, widths, change, saliency spread (+ twins alone)
SIDE_WIDTH = 50  # the size and training panels


def sparkline(values: list[float], width: int = 24) -> str:
    """The last ``width`` values as block characters scaled between their min and max."""
    values = [v for v in values[-width:] if v is not None and math.isfinite(v)]
    if not values:
        return ""
    low, high = min(values), max(values)
    span = high - low
    top = len(SPARK_CHARS) - 1
    return "".join(SPARK_CHARS[round((v - low) / span * top) if span > 0 else top // 2] for v in values)


def width_bar(now: int, seed: int, full: int, peak: int, cells: int) -> Text:
    """One cell per ``full / cells`` units: the seed part, the part grown beyond it, the part pruned
    since the group's peak, and the rest up to the full width."""
    full = max(1, full)

    def to_cells(units: int) -> int:
        return min(cells, round(units / full * cells))

    n_now = max(1 if now > 0 else 0, to_cells(now))
    n_seed = min(n_now, to_cells(seed))
    n_peak = max(n_now, to_cells(peak))
    bar = Text()
    bar.append("█" * n_seed, style="steel_blue1")
    bar.append("█" * (n_now - n_seed), style="green3")
    bar.append("░" * (n_peak - n_now), style="red3")
    bar.append("·" * (cells - n_peak), style="grey42")
    return bar


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "--:--"
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


def _twins(fraction: float | None) -> Text:
    """The share of the group's units with a near-copy (cosine > 0.9): red when it is most of them."""
    if fraction is None:
        return Text("")
    return Text(f"{fraction:.0%}", style="red3" if fraction >= 0.5 else "grey70")


def _spread(values: list[float] | None) -> str:
    if not values:
        return ""
    return " ".join(f"{v:4.2f}" if v < 10 else f"{v:4.0f}" for v in values)


class _Lines:
    """Lines already rendered to segments, drawn again as they are."""

    def __init__(self, lines: list[list[Segment]]):
        self.lines = lines

    def __rich_console__(self, console: Console, options: ConsoleOptions):
        for line in self.lines:
            yield from line
            yield Segment.line()


@dataclass
class View:
    """What the dashboard shows; filled from telemetry dicts only."""

    title: str = "cgap_triton"
    phase: str = "seed"
    step: int = 0
    epoch: float = 0.0
    epochs: int = 0
    steps_per_epoch: int = 1
    total_steps: int = 1
    start_step: int = 0
    started: float = field(default_factory=time.monotonic)
    logged_at: float | None = None  # monotonic time of the last step record
    steps_per_second: float | None = None
    widths: dict[str, int] = field(default_factory=dict)
    widths_seed: dict[str, int] = field(default_factory=dict)
    widths_full: dict[str, int] = field(default_factory=dict)
    widths_peak: dict[str, int] = field(default_factory=dict)
    last_change: dict[str, list[int]] = field(default_factory=dict)
    saliency_spread: dict[str, list[float]] = field(default_factory=dict)
    twin_fraction: dict[str, float] = field(default_factory=dict)
    params: int = 0
    params_full: int = 0
    peak_params: int = 0
    macs: int = 0
    macs_full: int = 0
    latest: dict[str, float] = field(default_factory=dict)
    history: dict[str, deque] = field(default_factory=dict)
    compile_state: str = "not compiled yet"
    compile_style: str = "grey62"
    compile_backend: str = ""
    compilations: int = 0
    compile_seconds: float = 0.0
    compile_fallbacks: int = 0
    events: deque = field(default_factory=lambda: deque(maxlen=6))
    checkpoint_step: int | None = None
    outcome: str | None = None

    def snapshot(self) -> View:
        """A copy the render thread can read while the trainer goes on logging."""
        return replace(
            self,
            history={k: list(v) for k, v in self.history.items()},
            events=deque(self.events),
            widths_peak=dict(self.widths_peak),
            latest=dict(self.latest),
        )


class Dashboard:
    """Telemetry sink that draws the run live in the terminal (rich ``Live``)."""

    SERIES = ("loss", "train_accuracy", "val_accuracy", "lr", "images_per_second")

    def __init__(
        self,
        refresh_per_second: float = 4.0,
        *,
        console: Console | None = None,
        history: int = 40,
        events: int = 6,
        live: bool = True,
    ):
        self.console = console or Console()
        self.view = View(events=deque(maxlen=events))
        self.view.history = {k: deque(maxlen=history) for k in self.SERIES}
        self._lock = threading.Lock()
        self._version = 0  # updates received; the render thread re-lays out the body only when it moves
        self._cached_key: tuple | None = None
        self._cached_body: RenderableType | None = None
        self.live: Live | None = None
        if live:
            self.live = Live(
                console=self.console,
                get_renderable=self._render_snapshot,
                refresh_per_second=refresh_per_second,
                redirect_stderr=False,
            )
            self.live.start()

    # ------------------------------------------------------------------------------- sink protocol

    def log_metrics(self, m: dict[str, Any]) -> None:
        with self._lock:
            self._version += 1
            v = self.view
            self._advance(m["step"])
            v.phase = m["phase"]
            v.params, v.macs, v.peak_params = m["params"], m["macs"], m.get("peak_params", v.peak_params)
            self._set_widths(m["widths"])
            v.saliency_spread = m.get("saliency_spread") or v.saliency_spread
            v.twin_fraction = m.get("twin_fraction") or v.twin_fraction
            for key in self.SERIES:
                if m.get(key) is not None:
                    v.latest[key] = m[key]
                    v.history[key].append(m[key])
            if "compiled" in m and not v.compile_state.startswith("compiling"):
                v.compile_state = "compiled" if m["compiled"] else "eager"
                v.compile_style = "green3" if m["compiled"] else "grey62"

    def log_event(self, e: Event) -> None:
        with self._lock:
            self._version += 1
            v = self.view
            if isinstance(e, Started):
                self._start(e)
            elif e.step is not None:  # events arrive between logged steps: keep the bars moving
                self._advance(e.step)
            if isinstance(e, STRUCTURAL):
                v.events.append((v.step if e.step is None else e.step, e.kind, describe_event(e)))
            match e:
                case StructuralChange():
                    v.params, v.macs = e.params, e.macs
                    v.peak_params = max(v.peak_params, e.params)
                    v.last_change = e.change
                    self._set_widths(e.widths)
                case PhaseChanged():
                    v.phase = e.to
                case Evaluated():
                    v.latest["val_accuracy"] = e.val_accuracy
                    v.history["val_accuracy"].append(e.val_accuracy)
                case Compiling():
                    v.compile_backend = e.backend
                    v.compile_state, v.compile_style = f"compiling {e.reason}…", "bold yellow"
                case Compiled():
                    v.compilations, v.compile_seconds = e.count, v.compile_seconds + e.seconds
                    v.compile_state = f"compiled {e.reason} in {e.seconds:.1f}s"
                    v.compile_style = "green3"
                case CompileFallback():
                    v.compile_fallbacks += 1
                    # The detail is long; it is in full in the events panel.
                    v.compile_state = f"fell back to eager ×{v.compile_fallbacks} (see events)"
                    v.compile_style = "bold red"
                case CheckpointSaved():
                    v.checkpoint_step = e.step
                case Finished():
                    v.phase = "done"
                    v.step = v.step if e.step is None else e.step
                    v.outcome = f"test accuracy {e.test_accuracy:.2%} · params −{e.params_reduction:.1%} vs full"

    def close(self) -> None:
        if self.live is not None:
            live, self.live = self.live, None
            live.stop()  # draws the final frame, which stays on screen above the summary table

    # ------------------------------------------------------------------------------- view model

    def _start(self, e: Started) -> None:
        v = self.view
        v.title = " · ".join(str(x) for x in (e.recipe, e.data, e.device) if x)
        v.phase, v.step = e.phase, e.step or 0
        v.start_step, v.started, v.logged_at = v.step, time.monotonic(), None
        v.epochs, v.steps_per_epoch, v.total_steps = e.epochs, max(1, e.steps_per_epoch), max(1, e.total_steps)
        v.epoch = v.step / v.steps_per_epoch
        v.widths_full, v.widths_seed = dict(e.widths_full), dict(e.widths_seed)
        v.params, v.params_full, v.macs, v.macs_full = e.params, e.params_full, e.macs, e.macs_full
        v.peak_params = max(v.peak_params, e.params)
        self._set_widths(e.widths)

    def _advance(self, step: int) -> None:
        v = self.view
        now = time.monotonic()
        if step < v.step:
            return
        if step > v.start_step and now > v.started:
            v.steps_per_second = (step - v.start_step) / (now - v.started)
        v.step, v.epoch, v.logged_at = step, step / v.steps_per_epoch, now

    def _set_widths(self, widths: dict[str, int]) -> None:
        v = self.view
        v.widths = widths
        for name, width in widths.items():
            if width > v.widths_peak.get(name, 0):
                v.widths_peak[name] = width

    # ------------------------------------------------------------------------------- rendering

    def _render_snapshot(self) -> RenderableType:
        with self._lock:
            view, version = self.view.snapshot(), self._version
        return self.render(view, version)

    def render(self, view: View | None = None, version: int | None = None) -> RenderableType:
        """The whole dashboard for the console's current size. With ``version`` (a count of the updates
        received), everything below the header is laid out again only after an update: between updates
        only the clock-driven header (elapsed time, ETA) changes, and the group table is the costly part."""
        if view is None:
            with self._lock:
                view = self.view.snapshot()
        width, height = self.console.size
        # A short terminal keeps fewer event lines, leaving rows for the groups.
        view.events = deque(list(view.events)[-max(2, min(len(view.events), (height - 24) // 2)) :])
        key = (version, width, height)
        if version is not None and key == self._cached_key:
            return Group(self._header(view), self._cached_body)
        body = self._body(view, width, height)
        if version is not None:
            lines = self.console.render_lines(body, self.console.options.update(width=width), pad=False)
            self._cached_key, self._cached_body = key, _Lines(lines)
            body = self._cached_body
        return Group(self._header(view), body)

    def _body(self, view: View, width: int, height: int) -> RenderableType:
        events = self._events(view)
        sizes, training = self._sizes(view), self._training(view, 22 if width >= 96 else 12)
        # Groups beside the numbers on a wide terminal; below them, the numbers side by side or stacked.
        if width >= 110:
            layout, beside, below = "wide", SIDE_WIDTH, 0
        elif width >= 80:
            layout, beside, below = "pair", 0, 9
        else:
            layout, beside, below = "stacked", 0, 16
        # Rows left for group rows once the header (5 lines), the events and the numbers are drawn, less
        # the group panel's borders and table header.
        budget = max(3, height - 5 - (max(1, len(view.events)) + 2) - below - 3)
        groups = self._groups(view, width - beside, budget)
        if layout == "wide":
            body = Table.grid(expand=True)
            body.add_column(ratio=1)
            body.add_column(width=SIDE_WIDTH)
            body.add_row(groups, Group(sizes, training))
        elif layout == "pair":
            numbers = Table.grid(expand=True)
            numbers.add_column(ratio=1)
            numbers.add_column(ratio=1)
            numbers.add_row(sizes, training)
            body = Group(groups, numbers)
        else:
            body = Group(groups, sizes, training)
        return Group(body, events)

    def _header(self, v: View) -> Panel:
        now = time.monotonic()
        phases = Text()
        for i, name in enumerate(PHASES):
            if i:
                phases.append(" › ", style="grey50")
            style = PHASE_STYLES[name] if name == v.phase else ("grey70" if self._past(name, v.phase) else "grey42")
            # The current phase is upper-cased as well as coloured, so it reads without colour too.
            phases.append(f" {PHASE_LABELS[name].upper()} " if name == v.phase else PHASE_LABELS[name], style=style)
        if v.phase == "done":
            phases.append("  ")
            phases.append(" DONE ", style=PHASE_STYLES["done"])
        grid = Table.grid(padding=(0, 1), expand=True)
        grid.add_column(width=6, style="bold")
        grid.add_column(width=16, no_wrap=True)
        grid.add_column(ratio=1)
        grid.add_column(width=5, justify="right")
        grid.add_column(width=11, no_wrap=True)
        elapsed = now - v.started
        info = Text(f"elapsed {_duration(elapsed)}", style="grey62")
        if v.checkpoint_step is not None:
            info.append(f" · checkpoint at step {v.checkpoint_step}")
        rate = v.steps_per_second
        since_log = now - v.logged_at if v.logged_at is not None else 0.0
        epoch_index = min(v.epochs, int(v.step // v.steps_per_epoch))
        in_epoch = v.step - epoch_index * v.steps_per_epoch
        epoch_total = v.steps_per_epoch if epoch_index < v.epochs else 1
        in_epoch = in_epoch if epoch_index < v.epochs else 1
        for label, detail, done, total in (
            ("epoch", f"{min(v.epochs, epoch_index + 1)}/{v.epochs}", in_epoch, epoch_total),
            ("run", f"step {v.step}/{v.total_steps}", v.step, v.total_steps),
        ):
            remaining = (total - done) / rate - since_log if rate and v.phase != "done" else None
            eta = "done" if done >= total else f"ETA {_duration(remaining)}"
            grid.add_row(
                label,
                detail,
                ProgressBar(total=total, completed=min(done, total), complete_style="green3"),
                f"{min(1.0, done / total):.0%}",
                eta,
            )
        subtitle = Text(v.outcome, style="bold green3") if v.outcome else info
        body = Group(Text.assemble(("phase  ", "bold"), phases), grid)
        return Panel(body, title=f"[bold]{v.title}[/]", title_align="left", subtitle=subtitle, subtitle_align="right")

    @staticmethod
    def _past(name: str, phase: str) -> bool:
        if phase == "done":
            return True
        return phase in PHASES and PHASES.index(name) < PHASES.index(phase)

    def _groups(self, v: View, width: int, budget: int) -> Panel:
        names = list(v.widths_full or v.widths)
        title = Text.assemble(
            ("channel groups  ", "bold"),
            ("█", "steel_blue1"),
            (" seed  ", "grey62"),
            ("█", "green3"),
            (" grown  ", "grey62"),
            ("░", "red3"),
            (" pruned  ", "grey62"),
            ("·", "grey42"),
            (" to full", "grey62"),
        )
        saliency = Text("saliency: p10 p50 p90 of S / mean S", style="grey62")
        if not names:
            return Panel(Text("waiting for the first step…", style="grey62"), title=title, title_align="left")
        # Many groups (ResNet-110 has 54) go into side-by-side columns, and past the rows the terminal
        # has, into a "… N more" line, so the rest of the dashboard stays on screen.
        max_columns = max(1, min(4, (width - 1) // GROUP_COLUMN_WIDTH))
        columns = min(max_columns, math.ceil(len(names) / max(1, budget - 1)))
        rows = math.ceil(len(names) / columns)
        shown = len(names)
        if rows + 1 > budget:
            rows = max(1, budget - 1)
            shown = min(len(names), rows * columns)
        cells = max(10, min(40, width - 62)) if columns == 1 else 10
        tables = []
        for c in range(columns):
            chunk = names[c * rows : min(shown, (c + 1) * rows)]
            if chunk:
                tables.append(self._group_table(v, chunk, cells, twins=columns == 1))
        grid = Table.grid(padding=(0, 3))
        for _ in tables:
            grid.add_column()
        grid.add_row(*tables)
        body: RenderableType = grid
        if shown < len(names):
            hidden = names[shown:]
            low = min(v.widths.get(n, 0) for n in hidden)
            high = max(v.widths.get(n, 0) for n in hidden)
            more = Text(f"… {len(hidden)} more groups ({hidden[0]} … {hidden[-1]}, widths {low}–{high})")
            body = Group(grid, Text(more.plain, style="grey62"))
        return Panel(body, title=title, title_align="left", subtitle=saliency, subtitle_align="right")

    def _group_table(self, v: View, names: list[str], cells: int, twins: bool = True) -> Table:
        """One row per group; the twins column (share of near-copied units) when the groups fit one column."""
        table = Table(box=None, padding=(0, 1), pad_edge=False, show_edge=False, header_style="grey62")
        table.add_column("group", no_wrap=True, style="bold", width=max(5, *(len(n) for n in names)))
        table.add_column("width", no_wrap=True, width=cells)
        table.add_column("now/full", justify="right", no_wrap=True, width=8)
        table.add_column("Δ", justify="right", no_wrap=True, width=4)
        table.add_column(" p10  p50  p90", no_wrap=True, style="grey70", width=14)
        if twins:
            table.add_column("twins", justify="right", no_wrap=True, width=5)
        for name in names:
            now, full = v.widths.get(name, 0), v.widths_full.get(name, 0)
            seed = v.widths_seed.get(name, now)
            change = v.last_change.get(name)
            delta = Text("")
            if change:
                step = change[1] - change[0]
                delta = Text(f"{step:+d}", style="green3" if step > 0 else "red3")
            table.add_row(
                name,
                width_bar(now, seed, full, v.widths_peak.get(name, now), cells),
                f"{now}/{full}",
                delta,
                _spread(v.saliency_spread.get(name)),
                *([_twins(v.twin_fraction.get(name))] if twins else []),
            )
        return table

    def _sizes(self, v: View) -> Panel:
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="bold")
        grid.add_column(justify="right")
        grid.add_column(style="grey62")

        def of_full(value: int, full: int) -> str:
            return f"{value / full:6.1%} of full" if full else ""

        grid.add_row("params", f"{v.params:,}", of_full(v.params, v.params_full))
        grid.add_row("peak", f"{v.peak_params:,}", of_full(v.peak_params, v.params_full))
        grid.add_row("full", f"{v.params_full:,}", "")
        grid.add_row("MACs", f"{v.macs:,}", of_full(v.macs, v.macs_full))
        grid.add_row("full", f"{v.macs_full:,}", "")
        return Panel(grid, title="[bold]size[/]", title_align="left")

    def _training(self, v: View, spark_cells: int) -> Panel:
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="bold", no_wrap=True, width=9)
        grid.add_column(justify="right", no_wrap=True, width=8)
        grid.add_column(style="cyan", no_wrap=True, width=spark_cells)
        formats = {
            "loss": ("loss", "{:.4f}"),
            "train_accuracy": ("train acc", "{:.2%}"),
            "val_accuracy": ("val acc", "{:.2%}"),
            "lr": ("lr", "{:.3g}"),
            "images_per_second": ("images/s", "{:,.0f}"),
        }
        for key, (label, fmt) in formats.items():
            value = v.latest.get(key)
            grid.add_row(
                label, fmt.format(value) if value is not None else "–", sparkline(v.history.get(key, []), spark_cells)
            )
        state = Text.assemble(("compile   ", "bold"), (v.compile_state, v.compile_style))
        if v.compilations or v.compile_backend:
            backend = f"{v.compile_backend} · " if v.compile_backend else ""
            totals = f"{backend}{v.compilations} compilations, {v.compile_seconds:.1f}s"
            state.append(f"\n          {totals}", style="grey62")
        state.no_wrap, state.overflow = True, "ellipsis"
        body = Group(grid, state)
        return Panel(body, title="[bold]training[/]", title_align="left")

    def _events(self, v: View) -> Panel:
        lines = Table.grid(padding=(0, 1), expand=True)
        lines.add_column(justify="right", style="grey62", no_wrap=True, width=10)
        lines.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
        for step, kind, text in v.events:
            lines.add_row(f"step {step}", Text(text, style=EVENT_STYLES.get(kind, "")))
        if not v.events:
            lines.add_row("", Text("no structural change yet", style="grey62"))
        return Panel(lines, title="[bold]last structural events[/]", title_align="left")

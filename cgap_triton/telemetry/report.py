"""Reading run folders: the growth curve (growth.png) and summary tables, one column per run.

A run folder that cannot be read (no such folder, no summary.json, a damaged summary.json or metrics.jsonl)
raises :class:`ReportError`, whose message is ``RUN: what is wrong``; :func:`print_report` leaves such runs
out of the table and returns their errors, so that one damaged run does not hide the others.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .events import PHASE_LABELS, PHASES

PHASE_COLOURS = {
    "seed": "#e6e6e6",
    "grow": "#d9f0d3",
    "stabilize": "#fff2cc",
    "prune": "#f8d7da",
    "finetune": "#dbe9f6",
}


class ReportError(Exception):
    """A run folder cannot be reported; ``str(err)`` is ``RUN: what is wrong``, on one line."""

    def __init__(self, run_dir: Path, problem: str):
        self.run_dir, self.problem = Path(run_dir), problem
        super().__init__(f"{run_dir}: {problem}")


class RunNotFound(ReportError):
    """The path is no run to report at all: no such folder, or no summary.json in it (an unfinished run)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_widths(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(g, str) and _is_int(w) and w >= 0 for g, w in value.items())


def _is_full_widths(value: Any) -> bool:
    return _is_widths(value) and bool(value) and all(w > 0 for w in value.values())


def _is_accuracy(value: Any) -> bool:
    # Telemetry writes a non-finite float as a string ("nan", "inf", "-inf").
    return _is_number(value) or value in ("nan", "inf", "-inf")


_INT, _NUMBER, _WIDTHS = (_is_int, "an integer"), (_is_number, "a number"), (_is_widths, "a mapping group → width")
# summary.json: the fields the report reads, each with its check and its description. The first ones every
# summary has; the others a summary from an older version may lack (the table then shows "-"), but when
# present they must have the right type.
_SUMMARY_REQUIRED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "test_accuracy": _NUMBER,
    "params": _INT,
    "params_full": _INT,
    "params_reduction": _NUMBER,
    "widths": _WIDTHS,
    "widths_full": (_is_full_widths, "a non-empty mapping group → positive width"),
}
_SUMMARY_OPTIONAL: dict[str, tuple[Callable[[Any], bool], str]] = {
    "recipe": (lambda v: isinstance(v, str), "a string"),
    "data": (lambda v: isinstance(v, str), "a string"),
    "synthetic_data": (lambda v: isinstance(v, bool), "true or false"),
    "macs": _INT,
    "macs_full": _INT,
    "macs_reduction": _NUMBER,
    "peak_params": _INT,
    "params_seed": _INT,
    "widths_seed": _WIDTHS,
    "structural_changes": _INT,
    "train_macs": _INT,
    "train_macs_dense": _INT,
    "train_macs_ratio": _NUMBER,
    "wall_seconds": _NUMBER,
    "compile_seconds": _NUMBER,
    "recompiles": _INT,
    "steps": _INT,
    "epochs": _NUMBER,
}
# metrics.jsonl: the fields of the events the growth curve reads.
_TRAJECTORY_EVENT = {"step": _INT, "params": _INT, "widths": _WIDTHS}
_EVENT_FIELDS: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "start": _TRAJECTORY_EVENT,
    "grow": _TRAJECTORY_EVENT,
    "prune": _TRAJECTORY_EVENT,
    "phase": {
        "step": _INT,
        "to": (lambda v: isinstance(v, str), "a phase name"),
        "from": (lambda v: v is None or isinstance(v, str), "a phase name or null"),
    },
    "eval": {"step": _INT, "val_accuracy": (_is_accuracy, "a number")},
}


def _json_kind(value: Any) -> str:
    kinds = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return kinds.get(type(value), "number")


def _shown(value: Any, limit: int = 40) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _field_problems(record: dict[str, Any], fields: dict, *, required: bool = True) -> list[str]:
    problems = []
    for field, (check, what) in fields.items():
        if field not in record:
            if required:
                problems.append(f"lacks {field!r}")
        elif not check(record[field]):
            problems.append(f"{field!r} should be {what}, got {_shown(record[field])}")
    return problems


def _joined(problems: list[str], most: int = 3) -> str:
    more = f"; and {len(problems) - most} more" if len(problems) > most else ""
    return "; ".join(problems[:most]) + more


def _read_text(run_dir: Path, name: str) -> str:
    try:
        return (Path(run_dir) / name).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ReportError(run_dir, f"{name} is not UTF-8 text") from None
    except OSError as err:
        raise ReportError(run_dir, f"{name} cannot be read ({err.strerror or err})") from None


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of metrics.jsonl (empty when there is none). A line that is not JSON is a torn line of a
    killed run (a resumed run appends after it) and is skipped; a line that is JSON but not an object, or an
    event the report draws from (start, grow, prune, phase, eval) lacking a field it reads, or holding one of
    the wrong type, is damage: ReportError names the lines."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    records, problems, torn = [], [], 0
    lines = _read_text(run_dir, "metrics.jsonl").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            torn += 1
            continue
        if not isinstance(record, dict):
            problems.append(f"line {number} is a JSON {_json_kind(record)}, not a record")
            continue
        event = record.get("event")
        fields = _EVENT_FIELDS.get(event) if isinstance(event, str) else None
        if fields:
            problems += [f"line {number} ({event} event) {p}" for p in _field_problems(record, fields)]
        records.append(record)
    if problems:
        raise ReportError(run_dir, f"metrics.jsonl: {_joined(problems)}")
    if torn and not records:
        raise ReportError(run_dir, f"metrics.jsonl: none of its {torn} lines is JSON")
    return records


def _phase_spans(phases: list[dict], end: int) -> list[tuple[str, int, int]]:
    """(phase, first step, last step) for each phase, the first one inferred when no event marks it."""
    phases = sorted(phases, key=lambda p: p["step"])
    if not phases or phases[0]["step"] > 0:
        first = phases[0].get("from") if phases else None
        if first is None:
            after = phases[0]["phase"] if phases else "grow"
            first = PHASES[max(0, PHASES.index(after) - 1)] if after in PHASES else "seed"
        phases = [{"step": 0, "phase": first}] + phases
    bounds = phases + [{"step": end, "phase": "end"}]
    return [(a["phase"], a["step"], b["step"]) for a, b in zip(bounds, bounds[1:]) if b["step"] > a["step"]]


def _count(value: float, _position=None) -> str:
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.0f}"


def plot_growth(
    run_dir: Path,
    trajectory: list[dict],
    phases: list[dict],
    widths_full: dict[str, int],
    *,
    summary: dict[str, Any] | None = None,
    accuracy: list[tuple[int, float]] | None = None,
) -> Path:
    """Write growth.png in ``run_dir``: total params over training with the phases shaded and named, the
    seed, full and peak sizes marked and validation accuracy on a second axis; below, each group's width
    as a fraction of its full width (one heatmap row per group), on the same step axis.

    ``trajectory`` holds ``{"step", "params", "widths"}`` at the start and after each structural change,
    ``phases`` ``{"step", "phase"}`` at each phase change. What they do not carry (the run's length, the
    seed and full sizes, the validation accuracy) comes from ``summary`` and ``accuracy``, or, when those
    are not given, from the run folder's summary.json and metrics.jsonl.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import FuncFormatter

    run_dir = Path(run_dir)
    if not trajectory:
        raise ValueError(f"{run_dir}: no trajectory to plot (no start, grow or prune records)")
    if summary is None:
        summary = load_summary(run_dir) if (run_dir / "summary.json").is_file() else {}
    if accuracy is None:
        accuracy = [(r["step"], float(r["val_accuracy"])) for r in read_metrics(run_dir) if r.get("event") == "eval"]
    steps = [t["step"] for t in trajectory]
    end = max(summary.get("steps", 0), steps[-1], *(p["step"] for p in phases), 1)
    groups = list(widths_full)

    fig = plt.figure(figsize=(10, 4.2 + min(5.5, 0.16 * len(groups))), layout="constrained")
    grid = fig.add_gridspec(2, 2, width_ratios=[1, 0.022], height_ratios=[1, min(1.6, 0.35 + 0.12 * len(groups))])
    ax1 = fig.add_subplot(grid[0, 0])
    ax2 = fig.add_subplot(grid[1, 0], sharex=ax1)
    colour_axis = fig.add_subplot(grid[1, 1])

    params = [t["params"] for t in trajectory]
    ax1.step(steps + [end], params + [params[-1]], where="post", color="#1f4e79", lw=2, label="parameters", zorder=3)
    for phase, a, b in _phase_spans(phases, end):
        ax1.axvspan(a, b, color=PHASE_COLOURS.get(phase, "#eeeeee"), lw=0, zorder=0)
        if a > 0:
            for ax in (ax1, ax2):
                ax.axvline(a, color="#555555" if ax is ax1 else "white", lw=0.8, ls="--", zorder=1)
        narrow = (b - a) / end < 0.07
        ax1.text(
            (a + b) / 2,
            0.97,
            PHASE_LABELS.get(phase, phase),
            transform=ax1.get_xaxis_transform(),
            ha="center",
            va="top",
            rotation=90 if narrow else 0,
            fontsize=9,
            fontweight="bold",
            color="#333333",
            zorder=4,
        )
    marks = [("full model", summary.get("params_full"), "#7f7f7f"), ("seed", summary.get("params_seed"), "#2e8b57")]
    for label, value, colour in marks:
        if value:
            ax1.axhline(value, color=colour, lw=1, ls=":", zorder=2)
            ax1.annotate(
                f"{label} {value:,}",
                (1, value),
                xycoords=("axes fraction", "data"),
                xytext=(-4, 2),
                textcoords="offset points",
                fontsize=8,
                color=colour,
                ha="right",
                va="bottom",
            )
    peak_index = int(np.argmax(params))
    ax1.plot(steps[peak_index], params[peak_index], "o", color="#c0392b", ms=5, zorder=4)
    ax1.annotate(
        f"peak {params[peak_index]:,}",
        (steps[peak_index], params[peak_index]),
        xytext=(4, -12),
        textcoords="offset points",
        fontsize=8,
        color="#c0392b",
    )
    ax1.annotate(
        f"final {params[-1]:,}",
        (end, params[-1]),
        xytext=(-4, 4),
        textcoords="offset points",
        ha="right",
        fontsize=8,
        color="#1f4e79",
    )
    # Headroom above the largest size (and above accuracy 1.0) keeps the phase names clear of the curves.
    headroom = 1.3
    top = max(params + [summary.get("params_full") or 0])
    ax1.set_ylim(0, top * headroom)
    ax1.set_xlim(0, end)
    ax1.yaxis.set_major_formatter(FuncFormatter(_count))
    ax1.set_ylabel("parameters")
    ax1.grid(alpha=0.3, zorder=0)
    ax1.tick_params(labelbottom=False)
    if summary.get("steps") and summary.get("epochs"):
        per_epoch = summary["steps"] / summary["epochs"]
        epochs = ax1.secondary_xaxis("top", functions=(lambda s: s / per_epoch, lambda e: e * per_epoch))
        epochs.set_xlabel("epoch", fontsize=9)
    if accuracy:
        acc_axis = ax1.twinx()
        acc_steps, acc_values = zip(*accuracy)
        acc_axis.plot(acc_steps, acc_values, color="#d4760a", lw=1.2, marker=".", ms=4, label="val accuracy")
        acc_axis.set_ylim(0, 1.22)
        acc_axis.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
        acc_axis.set_ylabel("validation accuracy", color="#d4760a")
        acc_axis.tick_params(axis="y", colors="#d4760a")
        handles = ax1.get_legend_handles_labels()[0] + acc_axis.get_legend_handles_labels()[0]
        acc_axis.legend(handles=handles, loc="center right", fontsize=8, framealpha=0.9)

    fractions = np.array([[t["widths"].get(g, np.nan) / widths_full[g] for t in trajectory] for g in groups])
    edges = steps + [end]
    mesh = ax2.pcolormesh(edges, np.arange(len(groups) + 1), fractions, cmap="viridis", vmin=0, vmax=1)
    # Widths in the cells where they fit: a reader can then check the heatmap against the summary.
    if len(groups) * len(steps) <= 240:
        for i, g in enumerate(groups):
            for j, t in enumerate(trajectory):
                if (edges[j + 1] - edges[j]) / end > 0.035:
                    ax2.text(
                        (edges[j] + edges[j + 1]) / 2,
                        i + 0.5,
                        str(t["widths"].get(g, "")),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="black" if fractions[i, j] > 0.6 else "white",
                    )
    every = max(1, len(groups) // 30)
    ticks = np.arange(0, len(groups), every)
    ax2.set_yticks(ticks + 0.5, [f"{groups[i]} ({widths_full[groups[i]]})" for i in ticks], fontsize=7)
    ax2.set_ylim(len(groups), 0)
    ax2.set_xlabel("training step")
    ax2.set_ylabel("group (full width)")
    colour_bar = fig.colorbar(mesh, cax=colour_axis)
    colour_bar.set_label("width / full width")
    seed = summary.get("widths_seed")
    if seed:
        fraction = float(np.median([seed[g] / widths_full[g] for g in groups if g in seed]))
        colour_bar.ax.axhline(fraction, color="white", lw=1.5)
        colour_bar.set_ticks(sorted({0.0, 0.5, 1.0, round(fraction, 2)}))
        colour_bar.ax.set_yticklabels(
            [f"{t:g} seed" if abs(t - round(fraction, 2)) < 1e-9 else f"{t:g}" for t in colour_bar.get_ticks()]
        )
    fig.add_subplot(grid[0, 1]).axis("off")
    name = summary.get("recipe", run_dir.name)
    fig.suptitle(f"{run_dir.name} ({name}): network size over training", fontsize=11)
    try:
        return save_figure(fig, run_dir / "growth.png", dpi=110)
    finally:
        plt.close(fig)


def save_figure(fig, path: Path, **savefig_kwargs: Any) -> Path:
    """Write a matplotlib figure to ``path`` through a new temporary file in the same folder, renamed over
    ``path``: a symbolic link at ``path`` is replaced by the image, never written through, and a reader never
    sees half an image. The file gets the usual permissions (0666 less the umask)."""
    path = Path(path)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            # O_EXCL: never opens an existing file or follows a link planted at the temporary name.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"{path.parent}: no free temporary name for {path.name}")
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format=path.suffix.lstrip(".") or "png", **savefig_kwargs)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def trajectory_from_metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """The growth curve's trajectory and phase changes, rebuilt from metrics.jsonl (ReportError when it is
    damaged: see :func:`read_metrics`)."""
    trajectory, phases = [], []
    for r in read_metrics(run_dir):
        if r.get("event") in ("start", "grow", "prune"):
            trajectory.append({"step": r["step"], "params": r["params"], "widths": r["widths"]})
        elif r.get("event") == "phase":
            phases.append({"step": r["step"], "phase": r["to"], "from": r.get("from")})
    return trajectory, phases


def load_summary(run_dir: Path) -> dict[str, Any]:
    """The run's summary.json, checked: RunNotFound when the folder or its summary.json is absent,
    ReportError when summary.json is unreadable, empty, not JSON, not a JSON object, or lacks a field the
    report needs or holds one of the wrong type."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunNotFound(run_dir, "no such run folder")
    if not (run_dir / "summary.json").is_file():
        raise RunNotFound(run_dir, "no summary.json (the run has not finished; resume it with --resume)")
    text = _read_text(run_dir, "summary.json")
    if not text.strip():
        raise ReportError(run_dir, "summary.json is empty")
    try:
        summary = json.loads(text)
    except json.JSONDecodeError as err:
        raise ReportError(run_dir, f"summary.json is not valid JSON ({err})") from None
    except RecursionError:
        raise ReportError(run_dir, "summary.json is not valid JSON (nested too deeply)") from None
    if not isinstance(summary, dict):
        raise ReportError(run_dir, f"summary.json holds a JSON {_json_kind(summary)}, not an object")
    problems = _field_problems(summary, _SUMMARY_REQUIRED) + _field_problems(summary, _SUMMARY_OPTIONAL, required=False)
    if problems:
        raise ReportError(run_dir, f"summary.json: {_joined(problems)}")
    return summary


def load_run(run_dir: Path) -> dict[str, Any]:
    """The run's summary, after checking both summary.json and metrics.jsonl (ReportError otherwise)."""
    summary = load_summary(run_dir)
    read_metrics(run_dir)
    return summary


def _names(run_dirs: list[Path]) -> list[str]:
    """Column names: folder names, or longer paths where two runs share a folder name."""
    names = [Path(d).name for d in run_dirs]
    if len(set(names)) < len(names):
        names = [str(d) for d in run_dirs]
    return names


def summary_table(runs: dict[str, dict[str, Any]]) -> Table:
    """One column per run: accuracy, size, reductions, training cost, per-group widths full → final.
    With several runs the best test accuracy and the smallest model are in bold."""
    table = Table(title="cgap_triton runs", show_lines=False)
    table.add_column("", style="bold")
    for name in runs:
        table.add_column(escape(name), justify="right")

    def ratio(s: dict) -> str:
        return f"{s['train_macs'] / max(1, s['train_macs_dense']):.2f}"

    rows = [
        ("recipe", lambda s: escape(str(s["recipe"])), None),
        ("data", lambda s: escape(str(s["data"])) + (" (synthetic)" if s.get("synthetic_data") else ""), None),
        ("test accuracy", lambda s: f"{s['test_accuracy']:.2%}", lambda s: -s["test_accuracy"]),
        ("params", lambda s: f"{s['params']:,}", lambda s: s["params"]),
        ("params reduction", lambda s: f"{s['params_reduction']:.1%}", None),
        ("MACs", lambda s: f"{s['macs']:,}", lambda s: s["macs"]),
        ("MACs reduction", lambda s: f"{s['macs_reduction']:.1%}", None),
        ("full model params", lambda s: f"{s['params_full']:,}", None),
        ("peak params", lambda s: f"{s['peak_params']:,}", None),
        ("train MACs / dense", ratio, None),
        ("structural changes", lambda s: str(s["structural_changes"]), None),
        ("wall seconds", lambda s: f"{s['wall_seconds']:.1f}", None),
        ("compiles", lambda s: f"{s['recompiles']} ({s['compile_seconds']:.1f}s)", None),
    ]
    summaries = list(runs.values())
    for label, fmt, best_key in rows:
        cells, values = [], []
        for s in summaries:
            try:
                cells.append(fmt(s))
                values.append(best_key(s) if best_key else None)
            except (KeyError, TypeError):  # a summary from an older version lacks the field
                cells.append("-")
                values.append(None)
        if best_key and len(summaries) > 1 and any(v is not None for v in values):
            best = min(v for v in values if v is not None)
            cells = [f"[bold green]{c}[/]" if v == best else c for c, v in zip(cells, values)]
        table.add_row(label, *cells)
    groups: list[str] = []
    for s in summaries:
        groups += [g for g in s.get("widths_full", {}) if g not in groups]
    if groups:
        table.add_section()
        table.add_row("widths: full → final", *[""] * len(summaries), style="grey62")
    for g in groups:
        cells = []
        for s in summaries:
            full, final = s.get("widths_full", {}).get(g), s.get("widths", {}).get(g)
            cells.append("-" if full is None else f"{full} → {final}")
        table.add_row(f"  {escape(g)}", *cells)
    return table


def print_report(run_dirs: list[Path], console: Console | None = None) -> list[ReportError]:
    """Print the summaries of the runs that can be read side by side, and return the errors of those that
    cannot (see :func:`load_run`), in the order given; they are left out of the table, which is not printed
    at all when no run can be read."""
    console = console or Console()
    good: list[tuple[Path, dict[str, Any]]] = []
    problems: list[ReportError] = []
    for d in run_dirs:
        try:
            good.append((Path(d), load_run(d)))
        except ReportError as err:
            problems.append(err)
    if good:
        console.print(summary_table(dict(zip(_names([d for d, _ in good]), [s for _, s in good]))))
    return problems


def regenerate_growth(run_dir: Path) -> Path | None:
    """Redraw growth.png from the run folder alone; None when metrics.jsonl has no trajectory. ReportError
    when the run folder is damaged or growth.png cannot be written (a symbolic link there is replaced, never
    written through)."""
    summary = load_summary(run_dir)
    trajectory, phases = trajectory_from_metrics(run_dir)
    if not trajectory:
        return None
    try:
        return plot_growth(run_dir, trajectory, phases, summary["widths_full"], summary=summary)
    except OSError as err:
        raise ReportError(run_dir, f"growth.png cannot be written ({err.strerror or err})") from None
    except (ValueError, TypeError, KeyError, IndexError, ZeroDivisionError) as err:
        raise ReportError(run_dir, f"growth.png cannot be drawn ({type(err).__name__}: {err})") from None

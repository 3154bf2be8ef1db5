"""Reading run folders: the growth curve (growth.png) and summary tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

PHASE_COLOURS = {"grow": "#d9f0d3", "stabilize": "#fff2cc", "prune": "#f8d7da", "finetune": "#dbe9f6"}


def plot_growth(run_dir: Path, trajectory: list[dict], phases: list[dict], widths_full: dict[str, int]) -> Path:
    """growth.png: total params over training with phase spans shaded; each group's width as a fraction
    of its full width (heatmap, one row per group)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    steps = [t["step"] for t in trajectory]
    end = max(steps[-1] if steps else 1, phases[-1]["step"] if phases else 1, 1)
    groups = list(widths_full)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6.5), height_ratios=[1, 1.3], sharex=True)
    ax1.step(
        steps + [end],
        [t["params"] for t in trajectory] + [trajectory[-1]["params"]],
        where="post",
        color="#1f4e79",
        lw=2,
    )
    bounds = phases + [{"step": end, "phase": "end"}]
    for a, b in zip(bounds, bounds[1:]):
        ax1.axvspan(a["step"], b["step"], color=PHASE_COLOURS.get(a["phase"], "#eeeeee"), alpha=0.8, lw=0)
        ax1.text(
            (a["step"] + b["step"]) / 2,
            1.0,
            a["phase"],
            transform=ax1.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax1.set_ylabel("parameters")
    ax1.grid(alpha=0.3)
    grid = np.full((len(groups), len(steps)), np.nan)
    for j, t in enumerate(trajectory):
        for i, g in enumerate(groups):
            grid[i, j] = t["widths"][g] / widths_full[g]
    edges = steps + [end]
    mesh = ax2.pcolormesh(edges, np.arange(len(groups) + 1), grid, cmap="viridis", vmin=0, vmax=1, shading="flat")
    ax2.set_yticks(np.arange(len(groups)) + 0.5, groups, fontsize=7 if len(groups) < 24 else 4)
    ax2.invert_yaxis()
    ax2.set_xlabel("training step")
    fig.colorbar(mesh, ax=ax2, label="width / full width", fraction=0.03)
    fig.suptitle(f"{Path(run_dir).name}: network size over training")
    fig.tight_layout()
    out = Path(run_dir) / "growth.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def load_summary(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no summary.json (the run has not finished)")
    return json.loads(path.read_text())


def summary_table(runs: dict[str, dict[str, Any]]) -> Table:
    """One column per run: accuracy, size, reductions, training cost, per-group widths full → final."""
    table = Table(title="cgap_triton runs", show_lines=False)
    table.add_column("", style="bold")
    for name in runs:
        table.add_column(name, justify="right")
    rows = [
        ("test accuracy", lambda s: f"{s['test_accuracy']:.4f}"),
        ("params", lambda s: f"{s['params']:,}"),
        ("params reduction", lambda s: f"{s['params_reduction']:.1%}"),
        ("MACs", lambda s: f"{s['macs']:,}"),
        ("MACs reduction", lambda s: f"{s['macs_reduction']:.1%}"),
        ("peak params", lambda s: f"{s['peak_params']:,}"),
        ("train MACs / dense", lambda s: f"{s['train_macs'] / max(1, s['train_macs_dense']):.2f}"),
        ("structural changes", lambda s: str(s["structural_changes"])),
        ("wall seconds", lambda s: f"{s['wall_seconds']:.1f}"),
        ("compiles", lambda s: f"{s['recompiles']} ({s['compile_seconds']:.1f}s)"),
    ]
    for label, fmt in rows:
        table.add_row(label, *[fmt(s) for s in runs.values()])
    groups = list(next(iter(runs.values()))["widths_full"])
    for g in groups:
        table.add_row(f"  {g}", *[f"{s['widths_full'].get(g, '-')} → {s['widths'].get(g, '-')}" for s in runs.values()])
    return table


def print_report(run_dirs: list[Path], console: Console | None = None) -> None:
    console = console or Console()
    runs = {Path(d).name: load_summary(d) for d in run_dirs}
    console.print(summary_table(runs))

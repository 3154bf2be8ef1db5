"""Accuracy versus size: CGaP and the prune-only baseline at several params targets, plus dense.

Every run goes through :class:`~cgap_triton.train.CGaPRecipe` into its own run folder; the sweep only
derives the recipes, collects the summaries into ``sweep.json`` and draws ``sweep.png``. The baselines
come from the CGaP recipe itself, so all three share data, model, schedule and importance:

- prune-only: ``cgap.seed_fraction = 1.0``, ``cgap.grow.enabled = false`` (same pruning and target);
- dense: as prune-only, with ``cgap.prune.enabled = false`` too.

An existing sweep folder is continued: runs that finished are read back, and a run stopped halfway is
resumed from its checkpoint, provided their recipe is the one this sweep would run. A folder holding anything
else (files the sweep does not write, run folders it does not plan) is refused, never written into.

A run whose final params reduction lands more than :data:`TARGET_TOLERANCE` from its target (pruning stopped
early, or overshot) is kept in sweep.json's runs with ``"off_target": true`` but left out of the means; each
aggregate cell counts how many it left out, and sweep.md and sweep.png show those runs apart.
"""

from __future__ import annotations

import json
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_text
from .recipe import Recipe, to_toml

METHODS = ("cgap", "prune_only", "dense")
LABELS = {"cgap": "CGaP (grow, then prune)", "prune_only": "prune-only", "dense": "dense (full width)"}
COLOURS = {"cgap": "#1f77b4", "prune_only": "#d62728", "dense": "#555555"}
# How far (absolute, in params-reduction fraction) a run's final reduction may land from its target and still
# count towards the means. Normal runs land within about 0.013 of it (docs/results/sweep.json: 30 runs, largest
# miss 0.0127); a run further off than this pruned to a different size than its row claims.
TARGET_TOLERANCE = 0.05
# What a sweep writes at the top of its folder besides the run folders (and their atomic-write temporaries).
SWEEP_FILES = ("sweep.json", "sweep.md", "sweep.png")
_TEMPORARY = re.compile(r"\.sweep\.(json|md|png)\..+\.tmp")


class SweepError(Exception):
    """The sweep cannot run as asked; the message names the argument and what was expected."""


@dataclass(frozen=True)
class PlannedRun:
    method: str
    target: float | None  # params-reduction target; None for dense
    seed: int
    recipe: Recipe

    @property
    def name(self) -> str:
        target = "" if self.target is None else f"-t{self.target:.2f}"
        return f"{self.method}{target}-s{self.seed}"


def parse_targets(text: str) -> list[float]:
    """``"0.5,0.7,0.9"`` → [0.5, 0.7, 0.9]; every value a params-reduction fraction in (0, 1)."""
    try:
        targets = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise SweepError(f"--targets: expected comma-separated fractions such as 0.5,0.7,0.9, got {text!r}") from None
    if not targets or not all(0 < t < 1 for t in targets):
        raise SweepError(f"--targets: expected params-reduction fractions strictly between 0 and 1, got {text!r}")
    # Run folders are named by the target to two decimals: two targets with one name would share a folder.
    by_name: dict[str, list[float]] = {}
    for t in sorted(targets):
        by_name.setdefault(f"{t:.2f}", []).append(t)
    clashes = [f"{' and '.join(str(t) for t in ts)} (both t{name})" for name, ts in by_name.items() if len(ts) > 1]
    if clashes:
        raise SweepError(
            f"--targets: each target once, differing within two decimals (run folders are named by them); "
            f"{'; '.join(clashes)} collide, got {text!r}"
        )
    return sorted(targets)


def off_target(run: dict[str, Any]) -> bool:
    """Whether a finished run with a target ended more than TARGET_TOLERANCE from it (dense never does)."""
    if run.get("target") is None or "params_reduction" not in run:
        return False
    return abs(run["params_reduction"] - run["target"]) > TARGET_TOLERANCE


def foreign_entries(out: Path, runs: Sequence[PlannedRun]) -> list[str]:
    """The entries of ``out`` that the sweep of ``runs`` did not write: anything but sweep.json, sweep.md,
    sweep.png, their temporaries and the planned run folders (real folders, not links), sorted by name."""
    planned = {run.name for run in runs}
    foreign = []
    for entry in sorted(out.iterdir(), key=lambda e: e.name):
        if entry.name in SWEEP_FILES or _TEMPORARY.fullmatch(entry.name):
            continue
        if entry.name in planned and entry.is_dir() and not entry.is_symlink():
            continue
        foreign.append(entry.name + ("/" if entry.is_dir() and not entry.is_symlink() else ""))
    return foreign


def plan(recipe: Recipe, targets: Sequence[float], seeds: int) -> list[PlannedRun]:
    """The runs of a sweep: per seed, dense once, then CGaP and prune-only at every target."""
    if not (recipe.cgap.grow.enabled and recipe.cgap.prune.enabled and recipe.cgap.seed_fraction < 1):
        raise SweepError(
            "RECIPE: expected a CGaP recipe (cgap.grow.enabled and cgap.prune.enabled true, cgap.seed_fraction < 1) "
            f"from which the baselines are derived, got grow.enabled={recipe.cgap.grow.enabled}, "
            f"prune.enabled={recipe.cgap.prune.enabled}, seed_fraction={recipe.cgap.seed_fraction}"
        )
    if seeds < 1:
        raise SweepError(f"--seeds: expected at least 1, got {seeds}")
    quiet = {"dashboard.enabled": False}
    prune_only = {**quiet, "cgap.seed_fraction": 1.0, "cgap.grow.enabled": False}
    dense = {**prune_only, "cgap.prune.enabled": False}
    runs = []
    for i in range(seeds):
        seed = recipe.run.seed + i
        runs.append(PlannedRun("dense", None, seed, recipe.replace(**dense, **{"run.seed": seed})))
        for target in targets:
            for method, extra in (("cgap", quiet), ("prune_only", prune_only)):
                derived = recipe.replace(**extra, **{"run.seed": seed, "cgap.prune.target_reduction": target})
                runs.append(PlannedRun(method, target, seed, derived))
    return runs


def run_sweep(
    recipe: Recipe,
    targets: Sequence[float],
    seeds: int,
    out: Path,
    *,
    command: str = "",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or continue) every planned run into ``out/<run name>``; write sweep.json, sweep.md, sweep.png."""
    from .train import CGaPRecipe, TrainingStopped

    runs = plan(recipe, targets, seeds)
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise SweepError(f"--out {out}: exists and is not a folder; choose another --out")
        for run in runs:
            saved = out / run.name / "recipe.toml"
            if saved.is_file() and saved.read_text() != to_toml(run.recipe):
                raise SweepError(
                    f"--out {out}: {run.name} was run with a different recipe or overrides; choose another --out "
                    f"(or repeat the original command to continue that sweep)"
                )
        foreign = foreign_entries(out, runs)
        if foreign:
            shown = ", ".join(foreign[:5]) + (f", … {len(foreign) - 5} more" if len(foreign) > 5 else "")
            runs_like = any((out / name / "recipe.toml").is_file() for name in foreign)
            hint = (
                " (run folders this sweep does not plan: from a sweep with other --targets or --seeds? repeat "
                "its command to continue it)"
                if runs_like
                else ""
            )
            raise SweepError(
                f"--out {out}: the folder holds {len(foreign)} entr{'y' if len(foreign) == 1 else 'ies'} this sweep "
                f"would not write ({shown}){hint}; only the same sweep's own folder is continued, never written "
                f"into otherwise: choose a new or empty --out"
            )
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = {
        "recipe": recipe.to_dict(),
        "command": command,
        "data": recipe.data.name,
        "synthetic_data": recipe.data.name == "shapes",
        "targets": list(targets),
        "target_tolerance": TARGET_TOLERANCE,
        "seeds": [recipe.run.seed + i for i in range(seeds)],
        "machine": _machine(),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "runs": [],
    }
    for i, run in enumerate(runs, 1):
        run_dir = out / run.name
        summary_path = run_dir / "summary.json"
        entry: dict[str, Any] = {"name": run.name, "method": run.method, "target": run.target, "seed": run.seed}
        if summary_path.is_file():
            summary = _finished_summary(run_dir, out)
            how = "kept"
        else:
            resume = (run_dir / "checkpoint.pt").is_file()
            trainer = CGaPRecipe(run.recipe, run_dir, resume=resume, recipe_name=run.name)
            try:
                trainer.setup()
                summary = trainer.train()
                how = "resumed" if resume else "ran"
            except TrainingStopped as err:
                summary, how = None, "failed"
                entry["error"] = str(err)
            finally:
                trainer.cleanup()
        if summary is not None:
            entry.update({k: summary[k] for k in _RUN_FIELDS})
            entry["off_target"] = off_target(entry)
            missed = (
                f"; OFF TARGET {run.target:.0%} (more than {TARGET_TOLERANCE:g} from it): left out of the means"
                if entry["off_target"]
                else ""
            )
            log(
                f"[{i}/{len(runs)}] {run.name}: test accuracy {summary['test_accuracy']:.4f}, "
                f"params {summary['params']:,} ({summary['params_reduction']:.1%} smaller), "
                f"{summary['wall_seconds']:.0f} s ({how}){missed}"
            )
        else:
            log(f"[{i}/{len(runs)}] {run.name}: failed: {entry['error']}")
        result["runs"].append(entry)
        result["aggregate"] = aggregate(result["runs"])
        # A continued sweep's own time says little; the runs' summed time is the cost of the whole sweep.
        result["wall_seconds"] = time.perf_counter() - started
        result["runs_wall_seconds"] = sum(r.get("wall_seconds", 0.0) for r in result["runs"])
        atomic_write_text(json.dumps(result, indent=2) + "\n", out / "sweep.json")
    atomic_write_text(markdown_table(result), out / "sweep.md")
    plot_sweep(result, out / "sweep.png")
    return result


_RUN_FIELDS = (
    "test_accuracy",
    "params",
    "params_full",
    "params_reduction",
    "macs",
    "macs_reduction",
    "peak_params",
    "train_macs",
    "train_macs_dense",
    "train_macs_ratio",
    "widths",
    "wall_seconds",
)
_MEANS = ("params", "params_reduction", "macs_reduction", "train_macs_ratio", "wall_seconds")


def _finished_summary(run_dir: Path, out: Path) -> dict[str, Any]:
    """A finished run's summary.json, read back when a sweep is continued (SweepError when it is damaged)."""
    from .telemetry.report import ReportError, load_summary

    try:
        summary = load_summary(run_dir)
    except ReportError as err:
        raise SweepError(f"--out {out}: {err}; remove that run folder to run it again") from None
    missing = [k for k in _RUN_FIELDS if k not in summary]
    if missing:
        raise SweepError(
            f"--out {out}: {run_dir}: summary.json lacks {', '.join(missing)}; remove that run folder to run it again"
        )
    return summary


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (method, target): accuracy mean, spread (sample std, min, max) and mean size over the seeds.

    Off-target runs (see :func:`off_target`) are left out of the means; ``off_target`` counts them per cell,
    ``seeds`` counts the runs averaged. A cell whose every run is off target has ``seeds`` 0 and no means."""
    cells: dict[tuple[str, float | None], list[dict]] = {}
    for r in runs:
        if "test_accuracy" in r:
            cells.setdefault((r["method"], r["target"]), []).append(r)
    rows = []
    for (method, target), finished in cells.items():
        rs = [r for r in finished if not off_target(r)]
        row: dict[str, Any] = {"method": method, "target": target, "seeds": len(rs)}
        row["off_target"] = len(finished) - len(rs)
        if rs:
            acc = [r["test_accuracy"] for r in rs]
            row.update(
                test_accuracy_mean=statistics.fmean(acc),
                test_accuracy_std=statistics.stdev(acc) if len(acc) > 1 else 0.0,
                test_accuracy_min=min(acc),
                test_accuracy_max=max(acc),
            )
            row.update({f"{k}_mean": statistics.fmean(r[k] for r in rs) for k in _MEANS})
        else:
            row.update(dict.fromkeys(["test_accuracy_mean", "test_accuracy_std", "test_accuracy_min"], None))
            row.update({"test_accuracy_max": None, **{f"{k}_mean": None for k in _MEANS}})
        rows.append(row)
    rows.sort(key=lambda a: (a["target"] or 0.0, METHODS.index(a["method"])))
    return rows


def markdown_table(result: dict[str, Any]) -> str:
    """CGaP and prune-only side by side per target (accuracy mean ± std over seeds), dense on top; a note
    under the table lists the off-target runs left out of the means (their cells are marked †)."""
    # A cell whose every run is off target has no means: it reads as empty.
    by = {(a["method"], a["target"]): a for a in result["aggregate"] if a["seeds"]}
    seeds = len(result["seeds"])
    spread = f"mean ± std over {seeds} seeds" if seeds > 1 else "1 seed"

    def acc(a):
        if a is None:
            return "–"
        return (
            f"{a['test_accuracy_mean']:.2%} ± {a['test_accuracy_std']:.2%}"
            if seeds > 1
            else f"{a['test_accuracy_mean']:.2%}"
        ) + _mark(a)

    lines = [
        "| target | CGaP test acc. | CGaP params (reduction) | CGaP train MACs / dense | prune-only test acc. "
        "| prune-only params (reduction) | CGaP − prune-only |",
        "|---|---|---|---|---|---|---|",
    ]
    dense = by.get(("dense", None))
    for target in result["targets"]:
        c, p = by.get(("cgap", target)), by.get(("prune_only", target))
        gap = f"{(c['test_accuracy_mean'] - p['test_accuracy_mean']) * 100:+.2f} pts" if c and p else "–"
        cost = f"{c['train_macs_ratio_mean']:.2f}" if c else "–"
        lines.append(f"| {target:.2f} | {acc(c)} | {_size(c)} | {cost} | {acc(p)} | {_size(p)} | {gap} |")
    header = f"Test accuracy ({spread}) on {result['data']}{' (synthetic)' if result['synthetic_data'] else ''}."
    if dense:
        header += f" Dense full-width reference: {acc(dense)} at {dense['params_mean']:,.0f} params."
    return header + "\n\n" + "\n".join(lines) + "\n" + _off_target_note(result)


def _mark(a: dict) -> str:
    return " †" if a.get("off_target") else ""


def _size(a: dict | None) -> str:
    return "–" if a is None else f"{a['params_mean']:,.0f} ({a['params_reduction_mean']:.1%}){_mark(a)}"


def _off_target_note(result: dict[str, Any]) -> str:
    missed = [r for r in result["runs"] if "test_accuracy" in r and off_target(r)]
    if not missed:
        return ""
    many = len(missed) > 1
    lines = [
        f"\n† Off target: {len(missed)} run{'s' * many} ended more than {TARGET_TOLERANCE:g} "
        f"(TARGET_TOLERANCE, absolute, in params reduction) from {'their' if many else 'its'} target and "
        f"{'are' if many else 'is'} left out of the means and spreads above (sweep.json keeps "
        f'{"them" if many else "it"}, with "off_target": true):',
        "",
    ]
    for r in missed:
        lines.append(
            f"- {r['name']}: params reduction {r['params_reduction']:.1%} for target {r['target']:.0%} "
            f"({(r['params_reduction'] - r['target']) * 100:+.1f} pts), test accuracy {r['test_accuracy']:.2%}"
        )
    return "\n".join(lines) + "\n"


def plot_sweep(result: dict[str, Any], path: Path) -> Path:
    """Test accuracy against final params (log axis): one line per method through the means over seeds,
    error bars from min to max, every seed as a faint dot, dense as a reference line with its range.
    Off-target runs are drawn apart, as crosses not joined to the line (they are not in its means).
    Written through a temporary file renamed over ``path``: a symbolic link there is replaced, not followed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .telemetry.report import save_figure

    fig, ax = plt.subplots(figsize=(8, 5.2))
    for method in ("cgap", "prune_only"):
        cells = [a for a in result["aggregate"] if a["method"] == method and a["seeds"]]
        finished = [r for r in result["runs"] if r["method"] == method and "test_accuracy" in r]
        dots = [r for r in finished if not off_target(r)]
        missed = [r for r in finished if off_target(r)]
        if missed:
            ax.scatter(
                [r["params"] for r in missed],
                [r["test_accuracy"] for r in missed],
                color=COLOURS[method],
                marker="x",
                s=40,
                lw=1.5,
                zorder=4,
                label=f"{LABELS[method]}: off target by > {TARGET_TOLERANCE:g}, not averaged",
            )
            for r in missed:
                ax.annotate(
                    f"{r['params_reduction']:.0%} for {r['target']:.0%}",
                    (r["params"], r["test_accuracy"]),
                    textcoords="offset points",
                    xytext=(5, 3),
                    fontsize=7,
                    color=COLOURS[method],
                )
        if not cells:
            continue
        x = [a["params_mean"] for a in cells]
        y = [a["test_accuracy_mean"] for a in cells]
        err = [[a["test_accuracy_mean"] - a["test_accuracy_min"] for a in cells]]
        err.append([a["test_accuracy_max"] - a["test_accuracy_mean"] for a in cells])
        ax.errorbar(x, y, yerr=err, color=COLOURS[method], marker="o", capsize=3, lw=1.8, label=LABELS[method])
        ax.scatter(
            [r["params"] for r in dots], [r["test_accuracy"] for r in dots], color=COLOURS[method], alpha=0.3, s=14
        )
        if method == "cgap":
            for a in cells:
                ax.annotate(
                    f"{a['target']:.0%}",
                    (a["params_mean"], a["test_accuracy_mean"]),
                    textcoords="offset points",
                    xytext=(4, -12),
                    fontsize=7,
                    color=COLOURS[method],
                )
    dense = [a for a in result["aggregate"] if a["method"] == "dense" and a["seeds"]]
    if dense:
        d = dense[0]
        ax.axhline(d["test_accuracy_mean"], color=COLOURS["dense"], ls="--", lw=1.2, label=LABELS["dense"])
        ax.axhspan(d["test_accuracy_min"], d["test_accuracy_max"], color=COLOURS["dense"], alpha=0.12, lw=0)
        ax.plot([d["params_mean"]], [d["test_accuracy_mean"]], marker="s", color=COLOURS["dense"])
    ax.set_xscale("log")
    ax.set_xlabel("final parameters (log scale; labels on CGaP points: params-reduction target)")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3, which="both")
    seeds = len(result["seeds"])
    data = result["data"] + (" (synthetic)" if result["synthetic_data"] else "")
    spread = f"bars: min–max over {seeds} seeds" if seeds > 1 else "1 seed"
    ax.set_title(f"Accuracy versus size on {data}; {spread}", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    try:
        return save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)


def _machine() -> dict[str, Any]:
    import os

    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
    }

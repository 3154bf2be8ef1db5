"""Accuracy versus size: CGaP and its baselines at several params targets, plus dense.

Every run goes through :class:`~cgap_triton.train.CGaPRecipe` into its own run folder; the sweep only
derives the recipes, collects the summaries into ``sweep.json`` and draws ``sweep.png``. The baselines
come from the CGaP recipe itself, so all of them share data, model, schedule and importance:

- prune-only: ``cgap.seed_fraction = 1.0``, ``cgap.grow.enabled = false`` (same pruning and target);
- dense: as prune-only, with ``cgap.prune.enabled = false`` too;
- scratch-E and scratch-B (Liu et al., "Rethinking the value of network pruning", 2019): the final widths of
  the CGaP run of the same target and seed (``model.widths``), trained as dense is (no growth, no pruning),
  from scratch: scratch-E for the same epochs, scratch-B for as many training MACs as that CGaP run spent
  (more epochs; see :func:`scratch_b_epochs`). Their recipes exist only once that CGaP run has finished.

``methods`` (``--methods``) selects what a sweep runs. The scratch methods need their CGaP runs: with
``cgap`` selected those run first; without it they must have finished in the folder already, and are read
back (and reported) rather than run.

An existing sweep folder is continued: runs that finished are read back, and a run stopped halfway is
resumed from its checkpoint, provided their recipe is the one this sweep would run. A folder holding anything
else (files the sweep does not write, run folders of no method of this sweep's targets and seeds) is refused,
never written into; run folders of methods left out of ``methods`` are checked the same way and left alone.

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

METHODS = ("cgap", "prune_only", "dense", "scratch_e", "scratch_b")
SCRATCH = ("scratch_e", "scratch_b")  # trained at a CGaP run's final widths, so planned after it
LABELS = {
    "cgap": "CGaP (grow, then prune)",
    "prune_only": "prune-only",
    "dense": "dense (full width)",
    "scratch_e": "scratch-E (CGaP's widths from scratch, same epochs)",
    "scratch_b": "scratch-B (CGaP's widths from scratch, same training MACs)",
}
SHORT = {
    "cgap": "CGaP",
    "prune_only": "prune-only",
    "dense": "dense",
    "scratch_e": "scratch-E",
    "scratch_b": "scratch-B",
}
COLOURS = {
    "cgap": "#1f77b4",
    "prune_only": "#d62728",
    "dense": "#555555",
    "scratch_e": "#2ca02c",
    "scratch_b": "#9467bd",
}
MARKERS = {"cgap": "o", "prune_only": "s", "scratch_e": "D", "scratch_b": "^"}
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
    target: float | None  # params-reduction target; None for dense (scratch runs: their CGaP run's)
    seed: int
    recipe: Recipe  # scratch methods: the template that scratch_recipe() completes from the CGaP run's summary
    source: str | None = None  # scratch methods: the name of the CGaP run whose final widths they train
    reuse: bool = False  # a CGaP run the scratch runs need but methods left out: read back, never run

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


def parse_methods(text: str) -> tuple[str, ...]:
    """``"cgap,scratch_e"`` → ("cgap", "scratch_e"): known method names, in :data:`METHODS` order, each once."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if not names or unknown:
        what = f"unknown method{'s' * (len(unknown) > 1)} {', '.join(unknown)}; " if unknown else ""
        raise SweepError(f"--methods: {what}expected a comma-separated selection of {','.join(METHODS)}, got {text!r}")
    return tuple(m for m in METHODS if m in names)


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


def plan(recipe: Recipe, targets: Sequence[float], seeds: int, methods: Sequence[str] = METHODS) -> list[PlannedRun]:
    """The runs of a sweep: per seed, dense once, then at every target CGaP, prune-only and the scratch runs
    (after the CGaP run they derive from), each if ``methods`` holds it. A scratch method without ``cgap`` in
    ``methods`` plans its CGaP runs all the same, as ``reuse``: read back from the folder, never run."""
    if not (recipe.cgap.grow.enabled and recipe.cgap.prune.enabled and recipe.cgap.seed_fraction < 1):
        raise SweepError(
            "RECIPE: expected a CGaP recipe (cgap.grow.enabled and cgap.prune.enabled true, cgap.seed_fraction < 1) "
            f"from which the baselines are derived, got grow.enabled={recipe.cgap.grow.enabled}, "
            f"prune.enabled={recipe.cgap.prune.enabled}, seed_fraction={recipe.cgap.seed_fraction}"
        )
    if seeds < 1:
        raise SweepError(f"--seeds: expected at least 1, got {seeds}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise SweepError(f"--methods: expected a selection of {','.join(METHODS)}, got {','.join(methods)!r}")
    quiet = {"dashboard.enabled": False}
    prune_only = {**quiet, "cgap.seed_fraction": 1.0, "cgap.grow.enabled": False}
    dense = {**prune_only, "cgap.prune.enabled": False}
    scratch = [m for m in SCRATCH if m in methods]
    runs = []
    for i in range(seeds):
        seed = recipe.run.seed + i
        if "dense" in methods:
            runs.append(PlannedRun("dense", None, seed, recipe.replace(**dense, **{"run.seed": seed})))
        for target in targets:
            at = {"run.seed": seed, "cgap.prune.target_reduction": target}
            cgap = PlannedRun("cgap", target, seed, recipe.replace(**quiet, **at), reuse="cgap" not in methods)
            if "cgap" in methods or scratch:
                runs.append(cgap)
            if "prune_only" in methods:
                runs.append(PlannedRun("prune_only", target, seed, recipe.replace(**prune_only, **at)))
            for method in scratch:  # dense at full width until scratch_recipe() sets the CGaP run's widths
                runs.append(PlannedRun(method, target, seed, recipe.replace(**dense, **at), source=cgap.name))
    return runs


def scratch_b_epochs(epochs: int, cgap: dict[str, Any]) -> int:
    """Scratch-B's epochs: as many as make the CGaP run's final model spend the training MACs that CGaP run spent
    in its ``epochs``, rounded, and at least ``epochs``. The final model's training MACs per epoch are the CGaP
    run's full-width ones (``train_macs_dense / epochs``: same data, batch and steps) scaled by its final MACs
    over full MACs (``1 - macs_reduction``)."""
    per_epoch = cgap["train_macs_dense"] / epochs * (1 - cgap["macs_reduction"])
    return max(epochs, round(cgap["train_macs"] / per_epoch)) if per_epoch > 0 else epochs


def scratch_recipe(run: PlannedRun, cgap: dict[str, Any]) -> Recipe:
    """A scratch run's recipe from its CGaP run's summary: that run's final widths, and for scratch-B the epochs
    of :func:`scratch_b_epochs` (the LR schedule, defined in fractions of training, follows them)."""
    extra: dict[str, Any] = {"model.widths": dict(cgap["widths"])}
    if run.method == "scratch_b":
        extra["train.epochs"] = scratch_b_epochs(run.recipe.train.epochs, cgap)
    return run.recipe.replace(**extra)


def run_sweep(
    recipe: Recipe,
    targets: Sequence[float],
    seeds: int,
    out: Path,
    *,
    methods: Sequence[str] = METHODS,
    command: str = "",
    log: Callable[[str], None] = print,
    latch: Any = None,
) -> dict[str, Any]:
    """Run (or continue) every planned run into ``out/<run name>``; write sweep.json, sweep.md, sweep.png.

    ``latch`` (a ``signals.SignalLatch``): SIGINT/SIGTERM recorded by the caller stop the sweep between runs."""
    from .train import CGaPRecipe, TrainingStopped

    runs = plan(recipe, targets, seeds, methods)
    grid = plan(recipe, targets, seeds)  # every method's runs: what a continued folder may hold
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise SweepError(f"--out {out}: exists and is not a folder; choose another --out")
        for run in grid:
            saved = out / run.name / "recipe.toml"
            if not saved.is_file():
                continue
            if run.source is None:
                _check_saved_recipe(run.name, run.recipe, out)
            elif (out / run.source / "summary.json").is_file():  # otherwise checked once its CGaP run finished
                _check_saved_recipe(run.name, scratch_recipe(run, _finished_summary(out / run.source, out)), out)
        foreign = foreign_entries(out, grid)
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
    absent = [run.name for run in runs if run.reuse and not (out / run.name / "summary.json").is_file()]
    if absent:
        shown = ", ".join(absent[:5]) + (f", … {len(absent) - 5} more" if len(absent) > 5 else "")
        scratch = [m for m in SCRATCH if m in methods]
        raise SweepError(
            f"--methods {','.join(methods)}: {' and '.join(scratch)} {'train' if len(scratch) > 1 else 'trains'} the "
            f"final widths of the CGaP run of the same target and seed, but {out} holds no finished {shown}; add cgap "
            f"to --methods to run {'them' if len(absent) > 1 else 'it'} first"
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
        "methods": [m for m in METHODS if any(run.method == m for run in runs)],
        "machine": _machine(),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "runs": [],
    }
    cgap_summaries: dict[str, dict[str, Any]] = {}  # finished CGaP runs by name: what scratch runs derive from
    for i, run in enumerate(runs, 1):
        run_dir = out / run.name
        summary_path = run_dir / "summary.json"
        entry: dict[str, Any] = {"name": run.name, "method": run.method, "target": run.target, "seed": run.seed}
        run_recipe, summary, how = run.recipe, None, "not run"
        if run.source is not None:
            entry["source"] = run.source
            if run.source in cgap_summaries:
                run_recipe = scratch_recipe(run, cgap_summaries[run.source])
                if (run_dir / "recipe.toml").is_file():
                    _check_saved_recipe(run.name, run_recipe, out)
        if run.source is not None and run.source not in cgap_summaries:
            entry["error"] = f"its CGaP run {run.source} did not finish, so there are no widths to train"
        elif summary_path.is_file():
            summary = _finished_summary(run_dir, out)
            how = "kept"
        else:
            resume = (run_dir / "checkpoint.pt").is_file()
            if latch is not None:
                latch.check()
            trainer = CGaPRecipe(run_recipe, run_dir, resume=resume, recipe_name=run.name, latch=latch)
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
            entry["epochs"] = run_recipe.train.epochs
            # Training MACs against the dense baseline's: full width for train.epochs (scratch-B trains longer).
            entry["train_macs_vs_dense"] = summary["train_macs_ratio"] * entry["epochs"] / recipe.train.epochs
            if run.method == "cgap":
                cgap_summaries[run.name] = summary
            if run.source is not None and summary["widths"] != cgap_summaries[run.source]["widths"]:
                raise SweepError(
                    f"--out {out}: {run.name} ended at widths {summary['widths']}, not at those of {run.source} "
                    f"({cgap_summaries[run.source]['widths']}) that it was to train; remove that run folder to run "
                    "it again"
                )
            entry["off_target"] = off_target(entry)
            missed = (
                f"; OFF TARGET {run.target:.0%} (more than {TARGET_TOLERANCE:g} from it): left out of the means"
                if entry["off_target"]
                else ""
            )
            epochs = f"{entry['epochs']} epoch{'s' * (entry['epochs'] != 1)}"
            scratch = f", widths of {run.source}, {epochs}" if run.source else ""
            log(
                f"[{i}/{len(runs)}] {run.name}: test accuracy {summary['test_accuracy']:.4f}, "
                f"params {summary['params']:,} ({summary['params_reduction']:.1%} smaller){scratch}, "
                f"{summary['wall_seconds']:.0f} s ({how}){missed}"
            )
        else:
            log(f"[{i}/{len(runs)}] {run.name}: {how}: {entry['error']}")
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
_MEANS = (
    "params",
    "params_reduction",
    "macs_reduction",
    "train_macs",
    "train_macs_ratio",
    "train_macs_vs_dense",
    "epochs",
    "wall_seconds",
)


def _check_saved_recipe(name: str, expected: Recipe, out: Path) -> None:
    """SweepError unless the recipe.toml of run ``name`` in ``out`` is ``expected``."""
    if (out / name / "recipe.toml").read_text() != to_toml(expected):
        raise SweepError(
            f"--out {out}: {name} was run with a different recipe or overrides; choose another --out "
            f"(or repeat the original command to continue that sweep)"
        )


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
    """Two tables: test accuracy (mean ± std over seeds) per target with one column per method and the CGaP −
    prune-only and CGaP − scratch-E gaps; then size and training cost per (method, target), dense first. A note
    under them lists the off-target runs left out of the means (their cells are marked †)."""
    # A cell whose every run is off target has no means: it reads as empty.
    by = {(a["method"], a["target"]): a for a in result["aggregate"] if a["seeds"]}
    seeds = len(result["seeds"])
    spread = f"mean ± std over {seeds} seeds" if seeds > 1 else "1 seed"
    shown = [m for m in result.get("methods", METHODS) if m != "dense"]
    gaps = [m for m in ("prune_only", "scratch_e") if "cgap" in shown and m in shown]

    def acc(a):
        if a is None:
            return "–"
        return (
            f"{a['test_accuracy_mean']:.2%} ± {a['test_accuracy_std']:.2%}"
            if seeds > 1
            else f"{a['test_accuracy_mean']:.2%}"
        ) + _mark(a)

    def gap(c, b):
        return f"{(c['test_accuracy_mean'] - b['test_accuracy_mean']) * 100:+.2f} pts" if c and b else "–"

    header = f"Test accuracy ({spread}) on {result['data']}{' (synthetic)' if result['synthetic_data'] else ''}."
    dense = by.get(("dense", None))
    if dense:
        header += f" Dense full-width reference: {acc(dense)} at {dense['params_mean']:,.0f} params."
    if any(m in SCRATCH for m in shown):
        header += (
            " Scratch-E and scratch-B train each CGaP run's final widths from scratch (no growth, no pruning), for "
            "the same epochs and for the same training MACs (Liu et al., 2019)."
        )
    parts = [header]
    if shown:
        columns = [f"{SHORT[m]} test acc." for m in shown] + [f"CGaP − {SHORT[m]}" for m in gaps]
        lines = ["| target | " + " | ".join(columns) + " |", "|---" * (1 + len(columns)) + "|"]
        for target in result["targets"]:
            cells = [acc(by.get((m, target))) for m in shown]
            cells += [gap(by.get(("cgap", target)), by.get((m, target))) for m in gaps]
            lines.append(f"| {target:.2f} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    cost = [
        "| method | target | params (reduction) | train MACs / dense | epochs |",
        "|---|---|---|---|---|",
    ]
    rows = [(m, t) for t in result["targets"] for m in shown]
    if "dense" in result.get("methods", METHODS):
        rows.insert(0, ("dense", None))
    for method, target in rows:
        a = by.get((method, target))
        where = "–" if target is None else f"{target:.2f}"
        if a is None:
            cost.append(f"| {SHORT[method]} | {where} | – | – | – |")
        else:
            cost.append(
                f"| {SHORT[method]} | {where} | {_size(a)} | {a['train_macs_vs_dense_mean']:.2f} "
                f"| {round(a['epochs_mean'], 1):g} |"
            )
    parts.append(
        "Size and training cost, means over the runs averaged above (train MACs / dense: against the dense "
        "baseline, full width for train.epochs epochs):"
    )
    parts.append("\n".join(cost))
    return "\n\n".join(parts) + "\n" + _off_target_note(result)


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
    """Two panels, test accuracy against final params and against training MACs (log axes): one line per method
    through the means over seeds, error bars from min to max, every seed as a faint dot, dense as a reference
    line with its range. Off-target runs are drawn apart, as crosses not joined to the line (they are not in its
    means). Written through a temporary file renamed over ``path``: a symbolic link there is replaced, not
    followed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .telemetry.report import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.6), sharey=True)
    panels = (
        ("params", "final parameters (log scale; labels on CGaP points: params-reduction target)", "size"),
        ("train_macs", "training MACs (log scale; 3 × forward MACs per training image)", "training compute"),
    )
    for ax, (key, xlabel, what) in zip(axes, panels, strict=True):
        _draw_panel(ax, result, key)
        ax.set_xscale("log")
        ax.set_xlabel(xlabel, fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.set_title(f"Accuracy versus {what}", fontsize=10)
    axes[0].set_ylabel("test accuracy")
    seeds = len(result["seeds"])
    data = result["data"] + (" (synthetic)" if result["synthetic_data"] else "")
    spread = f"bars: min–max over {seeds} seeds" if seeds > 1 else "1 seed"
    fig.suptitle(f"{data}; {spread}", fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=3, frameon=False)
    fig.tight_layout(rect=(0, 0.04 + 0.035 * ((len(labels) + 2) // 3), 1, 1))
    try:
        return save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)


def _draw_panel(ax, result: dict[str, Any], key: str) -> None:
    """One panel of sweep.png: test accuracy against ``key`` (a run field, "params" or "train_macs")."""
    for method in [m for m in METHODS if m != "dense"]:
        cells = [a for a in result["aggregate"] if a["method"] == method and a["seeds"]]
        finished = [r for r in result["runs"] if r["method"] == method and "test_accuracy" in r]
        dots = [r for r in finished if not off_target(r)]
        missed = [r for r in finished if off_target(r)]
        if missed:
            ax.scatter(
                [r[key] for r in missed],
                [r["test_accuracy"] for r in missed],
                color=COLOURS[method],
                marker="x",
                s=40,
                lw=1.5,
                zorder=4,
                label=f"{SHORT[method]}: off target by > {TARGET_TOLERANCE:g}, not averaged",
            )
            for r in missed:
                ax.annotate(
                    f"{r['params_reduction']:.0%} for {r['target']:.0%}",
                    (r[key], r["test_accuracy"]),
                    textcoords="offset points",
                    xytext=(5, 3),
                    fontsize=7,
                    color=COLOURS[method],
                )
        if not cells:
            continue
        x = [a[f"{key}_mean"] for a in cells]
        y = [a["test_accuracy_mean"] for a in cells]
        err = [[a["test_accuracy_mean"] - a["test_accuracy_min"] for a in cells]]
        err.append([a["test_accuracy_max"] - a["test_accuracy_mean"] for a in cells])
        ax.errorbar(
            x, y, yerr=err, color=COLOURS[method], marker=MARKERS[method], capsize=3, lw=1.8, label=LABELS[method]
        )
        ax.scatter([r[key] for r in dots], [r["test_accuracy"] for r in dots], color=COLOURS[method], alpha=0.3, s=14)
        if method == "cgap":
            for a in cells:
                ax.annotate(
                    f"{a['target']:.0%}",
                    (a[f"{key}_mean"], a["test_accuracy_mean"]),
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
        ax.plot([d[f"{key}_mean"]], [d["test_accuracy_mean"]], marker="s", color=COLOURS["dense"])


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

"""What one structural change costs a GPU run, piece by piece, under three cuDNN settings.

A CGaP run on a GPU re-captures its one-graph step after every change, and on an H200 each change cost about
0.25 s, a quarter to a third of a 4-epoch run. This sets up the real trainer on ``recipes/vgg19_c100.toml``
(random-pixel CIFAR-100 files) as ``benchmarks.trainer_step`` does, captures its step at the seed widths, then
applies ``--changes`` growth changes as the schedule plans them (rate 0.25 of each group, copies of the most
salient units, the recipe's noise) and after each one times, with a synchronisation around each piece:

- surgery: ``Structure.apply`` (the gather, layout restore, saliency plan);
- the next step, which re-captures: its wall time, and of it the first warm-up step at the new shapes (where
  cuDNN picks algorithms and builds plans, allocations happen and the saliency plan is built) and the whole
  capture as ``GraphedStep`` counts them;
- the mean of ``--steps`` steady steps after it.

Once per cuDNN setting, each in a process of its own (cuDNN's caches would carry one setting's plans into the
next): ``default`` (heuristics), ``benchmark`` (``torch.backends.cudnn.benchmark = True``: every new shape
autotuned) and ``off`` (``torch.backends.cudnn.enabled = False``: PyTorch's own convolutions). If the first
step's share is cuDNN's plan building, the settings move it; if not, they do not.

    python -m benchmarks.change_cost                 # CUDA; results under benchmarks/results/<gpu>/change_cost.*
    python -m benchmarks.change_cost --dry-run       # CPU, shapes_vgg, eager: checks that it runs
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from .common import RESULTS_DIR, environment, forever, print_table, synchronize, write_results

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {"default": {}, "benchmark": {"benchmark": True}, "off": {"enabled": False}}
COLUMNS = ["cudnn", "change", "params", "surgery_ms", "next_step_ms", "first_warmup_ms", "capture_ms", "steady_ms"]


def measure(recipe_path: Path, overrides: list[str], changes: int, steps: int, out: Path) -> list[dict[str, Any]]:
    """Rows for the seed widths (change 0) and after each growth change, in this process's cuDNN setting."""
    from cgap_triton.recipe import load_recipe
    from cgap_triton.train import CGaPRecipe

    from .training import with_noise

    trainer = CGaPRecipe(load_recipe(recipe_path, overrides), out)
    try:
        trainer.setup()
        device, graphed = trainer.device, trainer.graphed
        batches = forever(trainer.batches)
        for _ in range(8):  # capture (or warm up) at the seed widths, then steady steps
            trainer._train_step(*next(batches))
        rows = []
        for change_number in range(changes + 1):
            surgery = 0.0
            if change_number:
                change = trainer.schedule.plan_growth(trainer.model.widths, trainer.tracker.scores())
                if change is None:  # every group at its cap
                    break
                change = with_noise(change, trainer.recipe.cgap.grow.noise)
                synchronize(device)
                started = time.perf_counter()
                trainer._apply(change)
                synchronize(device)
                surgery = time.perf_counter() - started
            captured = (graphed.capture_seconds, graphed.first_step_seconds) if graphed is not None else (0.0, 0.0)
            started = time.perf_counter()
            trainer._train_step(*next(batches))
            synchronize(device)
            next_step = time.perf_counter() - started
            if graphed is not None:
                captured = (graphed.capture_seconds - captured[0], graphed.first_step_seconds - captured[1])
            started = time.perf_counter()
            for _ in range(steps):
                trainer._train_step(*next(batches))
            synchronize(device)
            steady = (time.perf_counter() - started) / steps
            rows.append(
                {
                    "change": change_number,
                    "params": trainer.structure.params,
                    "surgery_ms": surgery * 1e3,
                    "next_step_ms": next_step * 1e3,
                    "first_warmup_ms": captured[1] * 1e3,
                    "capture_ms": captured[0] * 1e3,
                    "steady_ms": steady * 1e3,
                }
            )
        return rows
    finally:
        trainer.cleanup()


def _child(args) -> int:
    """One cuDNN setting, in this process: its rows as JSON on the last line of stdout."""
    for flag, value in SETTINGS[args.setting].items():
        setattr(torch.backends.cudnn, flag, value)
    with tempfile.TemporaryDirectory(prefix="change-cost-") as tmp:  # the random CIFAR files: timing only
        rows = _measure_setting(args, Path(tmp))
    print(json.dumps([{"cudnn": args.setting, **row} for row in rows]))
    return 0


def _measure_setting(args, work: Path) -> list[dict[str, Any]]:
    from .trainer_step import recipe_for

    recipe, overrides = recipe_for(args.dry_run, work, (5_000, 1_000))
    if not args.dry_run:
        overrides.append("data.val_size=500")  # of the 5,000 training images
    return measure(recipe, overrides, args.changes, args.steps, work / "run")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.change_cost", description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, shapes_vgg, eager: check that it runs")
    parser.add_argument("--changes", type=int, default=4, help="growth changes after the seed widths")
    parser.add_argument("--steps", type=int, default=20, help="steady steps timed after each change")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--setting", choices=list(SETTINGS), help=argparse.SUPPRESS)  # a child process
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.setting:
        return _child(args)
    if args.dry_run:
        args.changes, args.steps, args.settings = min(args.changes, 2), min(args.steps, 2), ["default"]
    elif not torch.cuda.is_available():
        print("error: needs a CUDA device (or --dry-run)", file=sys.stderr)
        return 2
    rows = []
    for setting in args.settings:
        command = [sys.executable, "-m", "benchmarks.change_cost", "--setting", setting]
        command += ["--changes", str(args.changes), "--steps", str(args.steps)] + (
            ["--dry-run"] if args.dry_run else []
        )
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"error: cudnn {setting}: the measuring process failed:\n{done.stderr[-3000:]}", file=sys.stderr)
            return 1
        rows += json.loads(done.stdout.strip().splitlines()[-1])
        print(f"    cudnn {setting}: {len(rows)} rows so far", flush=True)
    device = torch.device("cpu" if args.dry_run else "cuda")
    notes = [
        "change 0: the seed widths, captured before; after it, one growth change each (rate 0.25, the recipe's "
        "noise), planned by the real schedule from the real saliency.",
        "next_step_ms: the first step after the change, which re-captures; first_warmup_ms and capture_ms are "
        "GraphedStep's own counts within it (the first warm-up step at the new shapes; the whole capture).",
        "Each cuDNN setting ran in its own process: default (heuristics), benchmark (autotuning), off (cuDNN "
        "disabled).",
    ]
    if args.dry_run:
        notes.insert(
            0, "DRY RUN on the CPU (eager, no graphs): these figures check the plumbing, they measure nothing."
        )
    name = "change_cost_dry_run" if args.dry_run else "change_cost"
    title = "One structural change on the GPU: surgery, re-capture, steady steps"
    write_results(
        name, rows, environment(device), title=title, columns=COLUMNS, notes=notes, results_dir=args.results_dir
    )
    print_table(title, rows, COLUMNS)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def figures(rows: list[dict[str, Any]]) -> str:
    """One line for a summary table: per setting, the mean after a change of the next step, its first warm-up
    step and capture, and surgery (milliseconds)."""
    parts = []
    for setting in dict.fromkeys(row["cudnn"] for row in rows):
        after = [row for row in rows if row["cudnn"] == setting and row["change"] > 0]
        if not after:
            continue

        def mean(key, after=after):
            return sum(row[key] for row in after) / len(after)

        parts.append(
            f"cudnn {setting}: next step {mean('next_step_ms'):.0f} ms (first warm-up {mean('first_warmup_ms'):.0f},"
            f" capture {mean('capture_ms'):.0f}), surgery {mean('surgery_ms'):.1f} ms"
        )
    return "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())

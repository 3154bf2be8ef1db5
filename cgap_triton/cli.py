"""Command line: ``python -m cgap_triton recipe RECIPE [key=value ...]`` and ``... report RUN_DIR ...``."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from .checkpoint import CheckpointError
from .data import DataError
from .recipe import RecipeError, load_recipe, to_toml

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cgap_triton", description="Grow and prune CNNs during training (CGaP)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("recipe", help="train from a TOML recipe")
    run.add_argument("recipe", nargs="?", help="recipe file (optional with --resume)")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.lr=0.05")
    run.add_argument("--out", help="run folder (default: runs/<recipe-stem>-<UTC time>)")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its checkpoint")
    run.add_argument("--no-dashboard", action="store_true", help="plain log lines instead of the live dashboard")
    run.add_argument("--print-config", action="store_true", help="print the resolved recipe and exit")
    report = sub.add_parser("report", help="summarise finished runs (side by side) and redraw growth.png")
    report.add_argument("runs", nargs="+", metavar="RUN_DIR")
    sweep = sub.add_parser(
        "sweep", help="accuracy versus size: CGaP and prune-only at several params targets, and dense"
    )
    sweep.add_argument("recipe", help="a CGaP recipe; the prune-only and dense baselines are derived from it")
    sweep.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides for every run")
    sweep.add_argument(
        "--targets", default="0.5,0.7,0.8,0.9,0.95", help="params-reduction targets (default: %(default)s)"
    )
    sweep.add_argument("--seeds", type=int, default=3, help="seeds per configuration, from run.seed on (default: 3)")
    sweep.add_argument(
        "--out", help="sweep folder (default: runs/sweep-<recipe-stem>-<UTC time>); an existing one is continued"
    )
    return parser


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "report":
        return _report(args)
    if args.command == "sweep":
        return _sweep(args)
    return _recipe(args)


def _recipe(args) -> int:
    resume = Path(args.resume) if args.resume else None
    recipe_path = args.recipe
    if recipe_path and "=" in recipe_path and not Path(recipe_path).exists():
        args.overrides.insert(0, recipe_path)
        recipe_path = None
    if resume is not None:
        if not (resume / "checkpoint.pt").is_file():
            return fail(f"--resume {resume}: no checkpoint.pt there")
        recipe_path = recipe_path or resume / "recipe.toml"
    if not recipe_path:
        return fail("recipe: a recipe file is required, e.g. python -m cgap_triton recipe recipes/quickstart.toml")
    try:
        recipe = load_recipe(recipe_path, args.overrides)
    except RecipeError as err:
        print(f"error: invalid recipe ({len(err.problems)} problem{'s' * (len(err.problems) > 1)}):", file=sys.stderr)
        for problem in err.problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_USAGE
    if args.print_config:
        sys.stdout.write(to_toml(recipe))
        return 0
    stem = Path(recipe_path).stem if resume is None else resume.name
    from .distributed import broadcast_value, init_from_env, shutdown

    # Under torchrun every rank joins here, so that rank 0 alone names and checks the run folder.
    world, _ = init_from_env(recipe.train.device)
    if resume is not None:
        out, problem = resume, None
    else:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        out = Path(args.out or recipe.run.out or f"runs/{stem}-{stamp}")
        problem = None
        if out.exists() and any(out.iterdir()):
            problem = f"--out {out}: the folder exists and is not empty; choose another, or --resume {out}"
        out, problem = broadcast_value((out, problem), world)
    if problem:
        shutdown()
        return fail(problem) if world.is_main else EXIT_USAGE
    dashboard = recipe.dashboard.enabled and not args.no_dashboard and sys.stdout.isatty() and world.is_main

    from .distributed import RankDisagreement
    from .train import CGaPRecipe, Interrupted, TrainingStopped

    run = CGaPRecipe(recipe, out, dashboard=dashboard, resume=resume is not None, recipe_name=stem)
    try:
        run.setup()
        summary = run.train()
    except (DataError, CheckpointError) as err:
        return fail(str(err)) if world.is_main else EXIT_USAGE
    except (TrainingStopped, RankDisagreement) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except Interrupted as err:
        if not world.is_main:
            return 128 + err.signum
        print(
            f"\ninterrupted ({err}); checkpoint saved. Resume with:\n  python -m cgap_triton recipe --resume {out}",
            file=sys.stderr,
        )
        return 128 + err.signum
    finally:
        run.cleanup()
    if not world.is_main:
        return 0
    from rich.console import Console

    from .report import summary_table

    Console().print(summary_table({out.name: summary}))
    print(f"run folder: {out}")
    return 0


def _sweep(args) -> int:
    from .sweep import SweepError, parse_targets, run_sweep

    try:
        recipe = load_recipe(args.recipe, args.overrides)
    except RecipeError as err:
        print(f"error: invalid recipe ({len(err.problems)} problem{'s' * (len(err.problems) > 1)}):", file=sys.stderr)
        for problem in err.problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_USAGE
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or f"runs/sweep-{Path(args.recipe).stem}-{stamp}")
    command = " ".join(["python -m cgap_triton", *sys.argv[1:]]) if sys.argv[1:2] == ["sweep"] else ""
    from .train import Interrupted

    try:
        run_sweep(recipe, parse_targets(args.targets), args.seeds, out, command=command)
    except (SweepError, DataError, CheckpointError) as err:
        return fail(str(err))
    except Interrupted as err:
        print(f"\ninterrupted ({err}); repeat the same command to continue the sweep in {out}", file=sys.stderr)
        return 128 + err.signum
    print(f"sweep folder: {out} (sweep.json, sweep.md, sweep.png)")
    return 0


def _report(args) -> int:
    from .report import print_report, regenerate_growth

    try:
        print_report([Path(d) for d in args.runs])
    except FileNotFoundError as err:
        return fail(str(err))
    for d in args.runs:
        png = regenerate_growth(Path(d))
        if png is not None:
            print(f"growth curve: {png}")
    return 0

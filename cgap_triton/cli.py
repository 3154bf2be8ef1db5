"""Command line: ``python -m cgap_triton recipe RECIPE [key=value ...]`` and ``... report RUN_DIR ...``."""

from __future__ import annotations

import argparse
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

from . import signals
from .recipe import RecipeError, load_recipe, to_toml
from .signals import Interrupted

EXIT_USAGE = 2
EXIT_FAILED = 1
RECIPE_USAGE = "python -m cgap_triton recipe RECIPE [key=value ...] [--out DIR] [--resume DIR]"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cgap_triton", description="Grow and prune CNNs during training (CGaP)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("recipe", help="train from a TOML recipe")
    run.add_argument("recipe", nargs="?", help="recipe file (optional with --resume)")
    # Overrides (key=value) are the arguments argparse does not know: they may stand anywhere after the recipe.
    run.add_argument("--out", help="run folder (default: runs/<recipe-stem>-<UTC time>)")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its checkpoint")
    run.add_argument("--no-dashboard", action="store_true", help="plain log lines instead of the live dashboard")
    run.add_argument("--print-config", action="store_true", help="print the resolved recipe and exit")
    report = sub.add_parser("report", help="summarise finished runs (side by side) and redraw growth.png")
    report.add_argument("runs", nargs="+", metavar="RUN_DIR")
    sweep = sub.add_parser(
        "sweep", help="accuracy versus size: CGaP and its baselines at several params targets, and dense"
    )
    sweep.add_argument("recipe", help="a CGaP recipe; the baselines are derived from it")
    sweep.add_argument(
        "--targets", default="0.5,0.7,0.8,0.9,0.95", help="params-reduction targets (default: %(default)s)"
    )
    sweep.add_argument("--seeds", type=int, default=3, help="seeds per configuration, from run.seed on (default: 3)")
    sweep.add_argument(
        "--methods",
        default="cgap,prune_only,dense,scratch_e,scratch_b",
        help="what to run (default: %(default)s); scratch_e/scratch_b train the final widths of the CGaP run of "
        "the same target and seed from scratch, for the same epochs / the same training MACs",
    )
    sweep.add_argument(
        "--out", help="sweep folder (default: runs/sweep-<recipe-stem>-<UTC time>); an existing one is continued"
    )
    return parser


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    # SIGINT/SIGTERM are recorded and acted on at safe points: before a run, between its steps, at its end.
    latch = signals.SignalLatch()
    previous = signals.install(latch)
    try:
        parser = _parser()
        try:
            args, extra = parser.parse_known_args(argv)
            options = [a for a in extra if a.startswith("-")]
            if options or (extra and args.command == "report"):
                parser.parse_args(argv)  # argparse's own message and usage for what it does not know
        except SystemExit as done:  # --help (0) or a usage error (2): a status, also when called in-process
            return int(done.code or 0)
        args.overrides = extra
        args.latch = latch
        if args.command == "report":
            return _report(args)
        if args.command == "sweep":
            return _sweep(args)
        return _recipe(args)
    except Interrupted as err:
        print(f"\ninterrupted ({err}) before a run started; nothing was saved", file=sys.stderr)
        return err.exit_status
    finally:
        if argv is None:  # the process exits now: a late signal of a burst must not kill it with another status
            signals.install(signal.SIG_IGN)
        else:  # called in-process: leave the caller's handlers as they were
            signals.restore(previous)


def _print_problems(problems: list[str], what: str = "invalid recipe") -> int:
    print(f"error: {what} ({len(problems)} problem{'s' * (len(problems) > 1)}):", file=sys.stderr)
    for problem in problems:
        print(f"  - {problem}", file=sys.stderr)
    return EXIT_USAGE


def _recipe(args) -> int:
    resume = Path(args.resume) if args.resume else None
    recipe_path = args.recipe
    if recipe_path and "=" in recipe_path and not Path(recipe_path).exists():
        if args.overrides and resume is None:
            return fail(
                f"recipe: the recipe file comes first, then the overrides ({RECIPE_USAGE}); "
                f"got the override {recipe_path!r} before {args.overrides[0]!r}"
            )
        args.overrides.insert(0, recipe_path)
        recipe_path = None
    if resume is not None:
        if args.out:
            return fail(f"--out {args.out}: a resumed run stays in its own folder ({resume}); drop --out or --resume")
        if not resume.is_dir():
            return fail(f"--resume {resume}: no such run folder")
        if not (resume / "checkpoint.pt").is_file():
            return fail(
                f"--resume {resume}: no checkpoint.pt there (the run stopped before its first checkpoint, or this "
                "is not a run folder); start it again without --resume"
            )
        recipe_path = recipe_path or resume / "recipe.toml"
    if not recipe_path:
        return fail("recipe: a recipe file is required, e.g. python -m cgap_triton recipe recipes/quickstart.toml")
    try:
        recipe = load_recipe(recipe_path, args.overrides)
    except RecipeError as err:
        return _print_problems(err.problems)
    if args.print_config:
        sys.stdout.write(to_toml(recipe))
        return 0
    from .environment import environment_problems

    problems = environment_problems(recipe)
    if problems:
        return _print_problems(problems, "this machine cannot run the recipe")
    args.latch.check()
    stem = Path(recipe_path).stem if resume is None else resume.name
    from .distributed import broadcast_value, init_from_env, shutdown
    from .runfolder import RunFolderError, check_new_folder

    # Under torchrun every rank joins here, so that rank 0 alone names and checks the run folder.
    world, _ = init_from_env(recipe.train.device)
    if resume is not None:
        out, problem = resume, None
    else:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        out = Path(args.out or recipe.run.out or f"runs/{stem}-{stamp}")
        problem = None
        if world.is_main:
            try:
                check_new_folder(out)
            except RunFolderError as err:
                problem = str(err)
        out, problem = broadcast_value((out, problem), world)
    if problem:
        shutdown()
        return fail(problem) if world.is_main else EXIT_USAGE
    dashboard = recipe.dashboard.enabled and not args.no_dashboard and sys.stdout.isatty() and world.is_main

    from .checkpoint import CheckpointError
    from .data import DataError
    from .distributed import RankDisagreement
    from .train import CGaPRecipe, TrainingStopped

    run = CGaPRecipe(recipe, out, dashboard=dashboard, resume=resume is not None, recipe_name=stem, latch=args.latch)
    # Messages are printed after cleanup(): the live dashboard's last frame would draw over them.
    status, message = 0, None
    try:
        run.setup()
        summary = run.train()
    except RecipeError as err:
        status, message = EXIT_USAGE, "\n".join(["invalid recipe for this data:", *(f"  - {p}" for p in err.problems)])
    except (DataError, CheckpointError, RunFolderError) as err:
        status, message = EXIT_USAGE, str(err)
    except (TrainingStopped, RankDisagreement) as err:
        status, message = EXIT_FAILED, str(err)
    except Interrupted as err:
        status = err.exit_status
        if (out / "checkpoint.pt").is_file():
            resume_line = f"python -m cgap_triton recipe --resume {out}"
            message = f"interrupted ({err}); checkpoint saved. Resume with:\n  {resume_line}"
        else:
            message = f"interrupted ({err}) before the first checkpoint; nothing was kept"
    except OSError as err:
        where = f": {err.filename}" if err.filename else ""
        status, message = EXIT_FAILED, f"{err.strerror or err}{where}"
    finally:
        run.cleanup()
    if status:
        if world.is_main:
            print(f"{'' if status > 2 else 'error: '}{message}", file=sys.stderr)
        return status
    if not world.is_main:
        return 0
    from rich.console import Console

    from .telemetry.report import summary_table

    Console().print(summary_table({out.name: summary}))
    print(f"run folder: {out}")
    return 0


def _sweep(args) -> int:
    from .sweep import SweepError, parse_methods, parse_targets, run_sweep

    try:
        recipe = load_recipe(args.recipe, args.overrides)
    except RecipeError as err:
        return _print_problems(err.problems)
    from .environment import environment_problems

    problems = environment_problems(recipe)
    if problems:
        return _print_problems(problems, "this machine cannot run the recipe")
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or f"runs/sweep-{Path(args.recipe).stem}-{stamp}")
    command = " ".join(["python -m cgap_triton", *sys.argv[1:]]) if sys.argv[1:2] == ["sweep"] else ""
    from .checkpoint import CheckpointError
    from .data import DataError
    from .runfolder import RunFolderError

    try:
        targets, methods = parse_targets(args.targets), parse_methods(args.methods)
        args.latch.check()
        run_sweep(recipe, targets, args.seeds, out, methods=methods, command=command, latch=args.latch)
    except RecipeError as err:  # a derived run's recipe (e.g. a seed past the limit)
        return _print_problems(err.problems)
    except (SweepError, DataError, CheckpointError, RunFolderError) as err:
        return fail(str(err))
    except Interrupted as err:
        print(f"\ninterrupted ({err}); repeat the same command to continue the sweep in {out}", file=sys.stderr)
        return err.exit_status
    print(f"sweep folder: {out} (sweep.json, sweep.md, sweep.png)")
    return 0


def _report(args) -> int:
    """The table of the runs that can be read, and their growth.png; one ``error: RUN: what is wrong`` line on
    stderr per run that cannot (no folder, no summary.json, a damaged summary.json or metrics.jsonl, growth.png
    not writable), the others still reported. Exit status: 0 when every run was reported; 2 when none of the
    arguments is a run at all (every one a missing folder or one without summary.json: nothing to report);
    1 otherwise when any run could not be reported."""
    from .telemetry.report import ReportError, RunNotFound, print_report, regenerate_growth

    runs = [Path(d) for d in args.runs]
    problems = print_report(runs)
    for err in problems:
        print(f"error: {err}", file=sys.stderr)
    failed = {err.run_dir for err in problems}
    for d in runs:
        if d in failed:
            continue
        try:
            png = regenerate_growth(d)
        except ReportError as err:
            print(f"error: {err}", file=sys.stderr)
            problems.append(err)
            failed.add(d)
            continue
        if png is not None:
            print(f"growth curve: {png}")
    if not problems:
        return 0
    return EXIT_USAGE if len(failed) == len(set(runs)) and all(isinstance(e, RunNotFound) for e in problems) else 1

"""Does ``compile.policy = "auto"`` end within 5 % of the faster of ``always`` and ``never``?

Trains a recipe (the quickstart by default) once per policy with ``compile.enabled = true``, each in a fresh
process with a fresh inductor cache, and compares the training loop's wall time (``summary.json``'s
``wall_seconds``: steps, evaluations, surgery and every compile; process start-up excluded, it is the same
for all three). ``--repeats`` interleaves the policies (always, never, auto, always, ...) so that a change in
the machine's load hits them alike; the median per policy is compared.

    python -m benchmarks.compile_policy                     # inductor, the quickstart's 30 epochs
    python -m benchmarks.compile_policy --backend aot_eager --epochs 10 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from .common import REPO_ROOT, RESULTS_DIR, environment, print_table, write_results
from .training import RunFailed, run_recipe

POLICIES = ("always", "never", "auto")
TOLERANCE = 0.05
COLUMNS = [
    "policy",
    "backend",
    "repeat",
    "wall_seconds",
    "process_seconds",
    "compile_seconds",
    "recompiles",
    "compile_fallbacks",
    "structural_changes",
    "test_accuracy",
]


def compare(rows: list[dict]) -> dict:
    """Median wall time per policy and whether auto is within TOLERANCE of the faster of always and never."""
    medians = {p: statistics.median(r["wall_seconds"] for r in rows if r["policy"] == p) for p in POLICIES}
    best_fixed = min(medians["always"], medians["never"])
    ratio = medians["auto"] / best_fixed
    return {"medians": medians, "auto_vs_best_fixed": ratio, "within_tolerance": ratio <= 1 + TOLERANCE}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compile_policy", description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default=str(REPO_ROOT / "recipes" / "quickstart.toml"))
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (inductor, aot_eager, ...)")
    parser.add_argument("--epochs", type=int, default=None, help="train.epochs override (default: the recipe's)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per policy, interleaved")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats: expected at least 1, got {args.repeats}")

    env = environment(torch.device("cpu"))
    env["recipe"] = Path(args.recipe).name
    rows = []
    for repeat in range(args.repeats):
        for policy in POLICIES:
            overrides = ["compile.enabled=true", f'compile.backend="{args.backend}"', f'compile.policy="{policy}"']
            if args.epochs is not None:
                overrides.append(f"train.epochs={args.epochs}")
            print(f"  {Path(args.recipe).name}: policy={policy} backend={args.backend} ...", flush=True)
            try:
                result = run_recipe(args.recipe, overrides)
            except RunFailed as err:
                print(f"error: {err}", file=sys.stderr)
                return 1
            rows.append({"policy": policy, "backend": args.backend, "repeat": repeat, **result})
            print(f"    wall {result['wall_seconds']:.1f} s, {result['recompiles']} compiles", flush=True)

    verdict = compare(rows)
    medians = verdict["medians"]
    line = (
        f"auto {medians['auto']:.1f} s against the faster fixed policy "
        f"{min(medians['always'], medians['never']):.1f} s (always {medians['always']:.1f} s, "
        f"never {medians['never']:.1f} s): {verdict['auto_vs_best_fixed']:.3f}×, "
        f"{'within' if verdict['within_tolerance'] else 'NOT within'} {TOLERANCE:.0%}"
    )
    notes = [
        line,
        f"recipe {env['recipe']}, epochs {args.epochs or 'as in the recipe'}, backend {args.backend}, "
        f"{args.repeats} run(s) per policy; fresh process and inductor cache per run.",
    ]
    if env["device"] == "cpu" and not env["gpu"]:
        notes.append("CPU timings on a machine shared with other work: the load average is recorded in the header.")
    print_table(f"compile policy ({args.backend})", rows, COLUMNS)
    print(line)
    paths = write_results(
        f"compile_policy_{args.backend}",
        rows,
        {**env, "verdict": verdict},
        title=f"compile.policy on {env['recipe']} ({args.backend})",
        columns=COLUMNS,
        notes=notes,
        results_dir=args.results_dir,
    )
    print("results: " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Growth-rule ablation: one CGaP recipe at one params target, one rule changed at a time, several seeds.

    python -m benchmarks.growth_ablation --seeds 0,1,2 --target 0.7 --out runs/growth-ablation
    python -m benchmarks.growth_ablation --only baseline,orthogonal --seeds 0

Every (variant, seed) is a real CLI run into ``OUT/<variant>-s<seed>``; a finished run is read back, so an
interrupted ablation continues where it stopped. ``OUT/ablation.json`` and ``OUT/ablation.md`` hold the runs
and a table of mean ± std test accuracy per variant, with params reduction and training MACs against dense.
Variants build on each other as listed (each row names what it adds), so a row's gain is that rule's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from .common import REPO_ROOT

RECIPE = "recipes/shapes_vgg.toml"

# (name, what the row adds, overrides). Later rows include the rows they name as their base.
ORTHOGONAL = ["cgap.grow.init=orthogonal_zero_out"]
CONSUMER = [*ORTHOGONAL, "cgap.importance.criterion=consumer_taylor"]
PER_PARAM = [*CONSUMER, "cgap.prune.rank=per_param"]
EARLY_ONLY = ["cgap.grow.every=0.25", "cgap.grow.reach=0.2", "cgap.grow.until=0.25", "cgap.stabilize=0.35"]
EARLY = [*PER_PARAM, *EARLY_ONLY]
VARIANTS: list[tuple[str, str, list[str]]] = [
    (
        "baseline",
        "the recipe before (copy_zero_out children, taylor saliency, units budget)",
        ["cgap.grow.init=copy_zero_out"],
    ),
    (
        "prune_only",
        "reference: the full model pruned with the baseline's importance and schedule",
        ["cgap.seed_fraction=1.0", "cgap.grow.enabled=false"],
    ),
    ("random_children", "children: random_zero_out", ["cgap.grow.init=random_zero_out"]),
    ("orthogonal_children", "children: orthogonal_zero_out", ORTHOGONAL),
    ("bn_saliency", "orthogonal + saliency bn_taylor", [*ORTHOGONAL, "cgap.importance.criterion=bn_taylor"]),
    ("consumer_saliency", "orthogonal + saliency consumer_taylor", CONSUMER),
    ("per_param", "+ pruning ranked per parameter freed, budget in parameters", PER_PARAM),
    ("early_full", "+ full width by 20 % of training, pruning from 60 %", EARLY),
    ("newborn_mean", "+ newborn saliency at the group mean", [*EARLY, "cgap.importance.newborn=mean"]),
    (
        "prune_only_new",
        "reference: prune-only with the new saliency and ranking",
        [
            "cgap.seed_fraction=1.0",
            "cgap.grow.enabled=false",
            "cgap.importance.criterion=consumer_taylor",
            "cgap.prune.rank=per_param",
            "cgap.stabilize=0.35",
            "cgap.grow.until=0.25",
        ],
    ),
    (
        "random_early",
        "random children, full width by 20 % of training, pruning from 60 % (taylor, units)",
        ["cgap.grow.init=random_zero_out", *EARLY_ONLY],
    ),
    (
        "orthogonal_early",
        "orthogonal children, full width by 20 %, pruning from 60 % (taylor, units)",
        [*ORTHOGONAL, *EARLY_ONLY],
    ),
    (
        "random_early_prune50",
        "random children, full width by 20 %, pruning from 50 % as prune-only does",
        ["cgap.grow.init=random_zero_out", *EARLY_ONLY[:3], "cgap.stabilize=0.25"],
    ),
    (
        "copy_random_parents",
        "premise: copy children of random parents (early_full otherwise)",
        [*EARLY, "cgap.grow.init=copy_zero_out", "cgap.grow.selection=random"],
    ),
    (
        "copy_important_parents",
        "premise: copy children of the most important parents (early_full otherwise)",
        [*EARLY, "cgap.grow.init=copy_zero_out"],
    ),
]
FIELDS = ("test_accuracy", "params", "params_reduction", "train_macs_ratio", "peak_params", "widths", "wall_seconds")


def run_one(
    name: str, overrides: list[str], seed: int, target: float, out: Path, extra: list[str], recipe: str = RECIPE
) -> dict:
    run_dir = out / f"{name}-s{seed}"
    summary = run_dir / "summary.json"
    if not summary.is_file():
        args = [sys.executable, "-m", "cgap_triton", "recipe"]
        if (run_dir / "checkpoint.pt").is_file():  # an interrupted run continues
            args += ["--resume", str(run_dir), "--no-dashboard"]
        else:
            args += [recipe, *overrides, *extra, f"run.seed={seed}", f"cgap.prune.target_reduction={target}"]
            args += ["--no-dashboard", "--out", str(run_dir)]
        done = subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            return {"name": name, "seed": seed, "error": done.stderr.strip().splitlines()[-1:]}
    data = json.loads(summary.read_text())
    return {"name": name, "seed": seed, **{k: data[k] for k in FIELDS}}


def table(runs: list[dict], target: float, recipe: str = RECIPE) -> str:
    lines = [
        f"Growth-rule ablation on shapes ({recipe}), params-reduction target {target}; "
        "mean ± std over the seeds listed.",
        "",
        "| variant | adds | seeds | test accuracy | params reduction | train MACs / dense |",
        "|---|---|---|---|---|---|",
    ]
    for name, adds, _ in VARIANTS:
        done = [r for r in runs if r["name"] == name and "test_accuracy" in r]
        if not done:
            continue
        acc = [r["test_accuracy"] for r in done]
        spread = f" ± {statistics.stdev(acc):.2%}" if len(acc) > 1 else ""
        seeds = ",".join(str(r["seed"]) for r in done)
        reduction = statistics.fmean(r["params_reduction"] for r in done)
        macs = statistics.fmean(r["train_macs_ratio"] for r in done)
        lines.append(
            f"| {name} | {adds} | {seeds} | {statistics.fmean(acc):.2%}{spread} | {reduction:.1%} | {macs:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--target", type=float, default=0.7)
    parser.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    parser.add_argument("--out", default="runs/growth-ablation")
    parser.add_argument("--recipe", default=RECIPE, help=f"the CGaP recipe the variants change (default {RECIPE})")
    parser.add_argument("overrides", nargs="*", help="key=value for every run (e.g. train.device=cuda)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    by_name = {v[0]: v for v in VARIANTS}
    unknown = [n for n in args.only.split(",") if n and n not in by_name]
    if unknown:
        parser.error(f"--only: unknown variants {', '.join(unknown)}; known: {', '.join(by_name)}")
    wanted = [by_name[n] for n in args.only.split(",")] if args.only else VARIANTS  # in the order asked
    seeds = [int(s) for s in args.seeds.split(",")]
    path = out / "ablation.json"
    runs = json.loads(path.read_text())["runs"] if path.is_file() else []
    for name, _, overrides in wanted:
        for seed in seeds:
            runs = [r for r in runs if not (r["name"] == name and r["seed"] == seed)]
            runs.append(run_one(name, overrides, seed, args.target, out, args.overrides, args.recipe))
            r = runs[-1]
            shown = f"{r['test_accuracy']:.2%} at {r['params_reduction']:.1%}" if "test_accuracy" in r else r["error"]
            print(f"{name} seed {seed}: {shown}", flush=True)
            path.write_text(json.dumps({"target": args.target, "recipe": args.recipe, "runs": runs}, indent=2) + "\n")
            (out / "ablation.md").write_text(table(runs, args.target, args.recipe))
    print(table(runs, args.target, args.recipe))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

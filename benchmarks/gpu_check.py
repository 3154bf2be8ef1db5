"""``make gpu-check``: everything a GPU machine should confirm, in one command of at most eight minutes.

Runs from the source tree with the torch and triton already installed (no network, no pip install), each part
in its own process with its own time limit, so that one failure or hang does not eat the rest:

1. kernel tests on CUDA — the interpreter's parametrised cases with tensors on the GPU
   (``CGAP_TEST_DEVICE=cuda``), plus the sizes the interpreter cannot afford and the CUDA-graph step;
2. kernel benchmarks (``benchmarks.run --parts kernels``);
3. the training step eager / compiled / as one CUDA graph at batch 128 and 512 (``benchmarks.step_modes``), and
   the real trainer's graphed step at the seed widths, its host time piece by piece (``benchmarks.trainer_step``);
4. ``recipes/vgg19_c100.toml`` for 4 epochs, growing and pruning every 0.25 epoch, and its dense baseline, on
   CIFAR-100-sized files in the official format filled with random pixels (timing only: the accuracy means
   nothing); then the same CGaP run with ``train.cuda_graphs=false``, to show what the graphed step buys;
5. with ``--change-cost``, ``benchmarks.change_cost``: one growth change's surgery and re-capture, piece by
   piece, under three cuDNN settings; with ``--policies``, the CGaP run under compile.policy never and always;

then writes ``benchmarks/results/<gpu>/gpu_check.{json,csv,md}`` (and each part's log beside them) and prints a
short table last. ``--dry-run`` runs the same plumbing on the CPU at tiny sizes (kernel tests that need no GPU,
the step benchmark on a tiny VGG, the recipe on 200 images at 1/8 width) — ``make test`` runs it, so it cannot rot.

    make gpu-check                                   # = PYTHONPATH=. python3 -m benchmarks.gpu_check
    python -m benchmarks.gpu_check --dry-run --results-dir /tmp/check
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .common import RESULTS_DIR, environment, machine_slug, print_table, write_results

ROOT = Path(__file__).resolve().parent.parent
# Limits per part (seconds, below) add up to 470: the whole check stays under eight minutes with start-up.
LIMITS = {  # an H200 took 50, >70, 52, 18, 18 and 23 s for these (2026-11-30); the rest is margin
    "kernel tests": 80,
    "kernel benchmarks": 130,
    "training step": 70,
    "trainer step": 30,
    "warm-up": 30,
    "vgg19_c100 CGaP": 45,
    "vgg19_c100 dense": 40,
    "vgg19_c100 CGaP, eager step": 45,
    "vgg19_c100 CGaP, policy never": 45,  # --policies: past the eight minutes
    "vgg19_c100 CGaP, policy always": 100,  # never finished on an H200: 10 compilations of 14-21 s
    "change cost": 90,  # --change-cost: past the eight minutes
}
# The real command line, with torchvision's md5 check of the CIFAR files off: random-pixel files cannot carry the
# official checksums (the tests load their tiny official-format files the same way).
RANDOM_FILES_CLI = (
    "import sys, torchvision.datasets.cifar as cifar\n"
    "cifar.check_integrity = lambda *args, **kwargs: True\n"
    "from cgap_triton.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)
COLUMNS = ["part", "status", "seconds", "limit_s", "figures"]


@dataclass
class Part:
    name: str
    command: list[str]
    limit_s: int
    env: dict[str, str] = field(default_factory=dict)
    needs_cuda: bool = False
    out: Path | None = None  # a recipe run's folder: its summary gives the figures


def run_part(part: Part, logs: Path, dry_run: bool) -> dict[str, Any]:
    """Run one part in its own process group, killed at its limit; its output goes to ``logs/<name>.log``."""
    row: dict[str, Any] = {"part": part.name, "status": "", "seconds": 0.0, "limit_s": part.limit_s, "figures": ""}
    if part.needs_cuda and dry_run:
        row["status"] = "skipped (needs CUDA)"
        return row
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **part.env}
    log = logs / f"{re.sub(r'[^a-z0-9]+', '_', part.name.lower()).strip('_')}.log"
    started = time.perf_counter()
    with open(log, "w") as out:
        out.write(f"$ {' '.join(part.command)}\n")
        out.flush()
        proc = subprocess.Popen(
            part.command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True
        )
        try:
            code = proc.wait(timeout=part.limit_s)
            row["status"] = "ok" if code == 0 else f"failed (exit {code})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            row["status"] = f"timeout ({part.limit_s} s)"
    row["seconds"] = round(time.perf_counter() - started, 1)
    row["log"] = str(log)
    return row


def pytest_figures(log: Path) -> str:
    """The pytest summary line: "N passed, M skipped in Xs"."""
    lines = [line for line in log.read_text().splitlines() if re.search(r"\d+ (passed|failed|error)", line)]
    return lines[-1].strip("= ") if lines else ""


def write_cifar100(root: Path, train: int, test: int) -> None:
    """CIFAR-100 in the official python format, random pixels (timing runs only)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", train), ("test", test)):
        labels = (np.arange(n) % 100).tolist()
        entry = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "fine_labels": labels,
            "coarse_labels": [label % 20 for label in labels],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    with open(folder / "meta", "wb") as f:
        pickle.dump(
            {"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": [f"s{i}" for i in range(20)]},
            f,
            protocol=2,
        )


def run_summary(out: Path) -> tuple[str, dict[str, Any]]:
    """(figures line, summary.json plus the trainer's median images/s over its logged windows) of one run."""
    try:
        s = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return "", {}
    rates = []
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "images_per_second" in record:
            rates.append(record["images_per_second"])
    s["median_images_per_s"] = float(np.median(rates)) if rates else 0.0
    figures = (
        f"wall {s['wall_seconds']:.1f} s, {s['median_images_per_s']:.0f} img/s (median window), "
        f"{s['structural_changes']} changes ({s.get('structural_change_seconds', 0.0):.2f} s), train MACs "
        f"{s['train_macs_ratio']:.2f} of dense, compile {s['compile_seconds']:.1f} s ({s['recompiles']}), "
        f"graphs {s.get('cuda_graph_captures', 0)} ({s.get('cuda_graph_capture_seconds', 0.0):.2f} s, "
        f"first steps at new shapes {s.get('cuda_graph_first_step_seconds', 0.0):.2f} s)"
    )
    return figures, s


def derive(cgap: dict[str, Any], dense: dict[str, Any], eager: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets from the runs: CGaP/dense wall time, change overhead, the projected 160-epoch run."""
    if not (cgap and dense):
        return {}
    # A graphed run compiles inside its captures' warm-up: the capture seconds hold its compilations.
    graphed = cgap.get("cuda_graph_captures", 0) > 0
    rebuild = cgap.get("cuda_graph_capture_seconds", 0.0) if graphed else cgap["compile_seconds"]
    overhead = cgap.get("structural_change_seconds", 0.0) + rebuild
    derived: dict[str, Any] = {
        "cgap_over_dense_wall": cgap["wall_seconds"] / max(1e-9, dense["wall_seconds"]),
        "cgap_change_overhead_fraction": overhead / max(1e-9, cgap["wall_seconds"]),
        "projected_160_epoch_cgap_minutes": cgap["wall_seconds"] / cgap["epochs"] * 160 / 60,
        "dense_trainer_images_per_s": dense["median_images_per_s"],
    }
    line = (
        f"CGaP/dense wall {derived['cgap_over_dense_wall']:.2f}; change overhead "
        f"{100 * derived['cgap_change_overhead_fraction']:.1f} % of the CGaP run; projected 160-epoch CGaP "
        f"{derived['projected_160_epoch_cgap_minutes']:.1f} min; dense trainer {dense['median_images_per_s']:.0f} img/s"
    )
    if eager:
        derived["cgap_eager_over_graphed_wall"] = eager["wall_seconds"] / max(1e-9, cgap["wall_seconds"])
        line += f"; CGaP eager step/graphed wall {derived['cgap_eager_over_graphed_wall']:.2f}"
    return {**derived, "line": line}


def run_parts(
    parts: list[Part], logs: Path, dry: bool, steps_json: Path, budget_s: float | None, report
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Run the parts in order, each within its limit and what is left of ``budget_s``; ``report(rows, runs)``
    after every part, so that results written so far survive a kill from outside."""
    rows: list[dict[str, Any]] = []
    runs: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    for part in parts:
        if budget_s is not None:
            left = int(budget_s - (time.perf_counter() - started))
            if left < 20:
                rows.append({**_row(part), "status": "skipped (budget spent)"})
                continue
            part.limit_s = min(part.limit_s, left)
        print(f"gpu-check: {part.name} (limit {part.limit_s} s) ...", flush=True)
        row = run_part(part, logs, dry)
        if part.name == "kernel tests" and "log" in row:
            row["figures"] = pytest_figures(Path(row["log"]))
        elif part.name == "trainer step" and steps_json.with_name("trainer.json").is_file():
            t = json.loads(steps_json.with_name("trainer.json").read_text())
            row["figures"] = (
                f"seed widths, batch {t['batch']}: {t['wall_ms_per_step']:.2f} ms/step, {t['images_per_s']:.0f} img/s; "
                f"host {t['draw_us']:.0f} µs drawing the batch + {t['train_step_host_us']:.0f} µs in the step"
            )
        elif part.name == "change cost" and steps_json.with_name("change_cost.json").is_file():
            from .change_cost import figures

            row["figures"] = figures(json.loads(steps_json.with_name("change_cost.json").read_text()))
        elif part.name == "training step" and steps_json.is_file():
            row["figures"] = "; ".join(
                f"{s['mode']} b{s['batch']} {s['images_per_s']:.0f} img/s" for s in json.loads(steps_json.read_text())
            )
        elif part.out is not None:
            row["figures"], runs[part.name] = run_summary(part.out)
        rows.append(row)
        print(f"  {row['status']} in {row['seconds']} s {row['figures']}", flush=True)
        report(rows, runs)
    return rows, runs


def _row(part: Part) -> dict[str, Any]:
    return {"part": part.name, "status": "", "seconds": 0.0, "limit_s": part.limit_s, "figures": ""}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: check the plumbing")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--policies",
        action="store_true",
        help="also run the CGaP recipe under compile.policy never and always (past the eight minutes)",
    )
    parser.add_argument(
        "--change-cost",
        action="store_true",
        help="also run benchmarks.change_cost: one change's surgery and re-capture under three cuDNN settings",
    )
    parser.add_argument(
        "--budget-s", type=float, help="seconds for all parts together: a part gets at most what is left"
    )
    parser.add_argument(
        "--only", action="append", metavar="PART", help="run only this part (by its name in the table; repeatable)"
    )
    args = parser.parse_args(argv)
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        print("error: no CUDA device here; run with --dry-run to check the plumbing on the CPU", file=sys.stderr)
        return 2
    device = torch.device("cpu" if dry else "cuda")
    env = environment(device)
    folder = args.results_dir / machine_slug(env)
    folder.mkdir(parents=True, exist_ok=True)
    logs = folder / "gpu_check_logs"
    logs.mkdir(exist_ok=True)
    py = sys.executable
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    steps_json = work / "steps.json"

    kernel_tests = ["tests/test_kernels_large.py", "tests/test_cuda_graphs.py"]
    # Hundreds of parametrised cases, each a Triton compilation on a fresh machine: compile them side by side.
    xdist = ["-n", "8"] if not dry and importlib.util.find_spec("xdist") is not None else []
    if not dry:
        kernel_tests = ["tests/test_channel_stats.py", "tests/test_gather_channels.py", *kernel_tests]
    test_env = {"CGAP_TEST_DEVICE": "cpu" if dry else "cuda"}
    data = work / "data"
    write_cifar100(data, 200 if dry else 50_000, 50 if dry else 10_000)
    small = work / "small"
    write_cifar100(small, 200 if dry else 2_000, 50 if dry else 500)
    run_args = [f"data.root={data}", "train.epochs=1" if dry else "train.epochs=4", "dashboard.enabled=false"]
    run_args += ["cgap.grow.every=0.25", "cgap.prune.every=0.25", "checkpoint.every=1"]
    run_args += [f"train.log_every={2 if dry else 20}"]
    if dry:
        run_args += [
            "model.width_multiplier=0.125",
            "train.device=cpu",
            "train.precision=fp32",
            "data.val_size=50",
            "train.channels_last=false",
            "data.batch_size=32",
            "compile.enabled=false",
        ]

    replaced = ("data.root=", "data.val_size=", "train.epochs=")
    warm_args = [a for a in run_args if not a.startswith(replaced)]
    warm_args += [f"data.root={small}", f"data.val_size={50 if dry else 500}", "train.epochs=1"]

    def recipe_run(name: str, recipe: str, folder_name: str, *extra: str) -> Part:
        out = work / folder_name
        command = [py, "-c", RANDOM_FILES_CLI, "recipe", f"recipes/{recipe}", *run_args, *extra, "--out", str(out)]
        return Part(name, command, 90 if dry else LIMITS[name], out=out)

    parts = [
        Part(
            "kernel tests",
            [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", *xdist, *kernel_tests],
            LIMITS["kernel tests"],
            test_env,
        ),
        Part(
            "kernel benchmarks",
            [py, "-m", "benchmarks.run", "--parts", "kernels", "--results-dir", str(args.results_dir)],
            LIMITS["kernel benchmarks"],
            needs_cuda=True,
        ),
        Part(
            "training step",
            [py, "-m", "benchmarks.step_modes", "--json", str(steps_json)] + (["--dry-run"] if dry else []),
            LIMITS["training step"],
        ),
        Part(
            "trainer step",
            [py, "-m", "benchmarks.trainer_step", "--json", str(steps_json.with_name("trainer.json"))]
            + (["--dry-run"] if dry else []),
            LIMITS["trainer step"],
        ),
        # Untimed: the first process of a fresh machine compiles the Triton kernels that surgery and the saliency
        # use (about 1 s on an H200); this run puts them in Triton's cache, so that no timed run pays for it.
        Part(
            "warm-up",
            [py, "-c", RANDOM_FILES_CLI, "recipe", "recipes/vgg19_c100.toml", *warm_args, "--out", str(work / "warm")],
            90 if dry else LIMITS["warm-up"],
        ),
        recipe_run("vgg19_c100 CGaP", "vgg19_c100.toml", "cgap"),
        recipe_run("vgg19_c100 dense", "vgg19_c100_dense.toml", "dense"),
        recipe_run("vgg19_c100 CGaP, eager step", "vgg19_c100.toml", "eager", "train.cuda_graphs=false"),
    ]
    if args.change_cost:
        command = [py, "-m", "benchmarks.change_cost", "--results-dir", str(args.results_dir)]
        command += ["--json", str(steps_json.with_name("change_cost.json"))] + (["--dry-run"] if dry else [])
        parts.append(Part("change cost", command, LIMITS["change cost"]))
    if args.policies:
        parts += [
            recipe_run(f"vgg19_c100 CGaP, policy {policy}", "vgg19_c100.toml", policy, f"compile.policy={policy}")
            for policy in ("never", "always")
        ]
    if args.only:
        unknown = sorted(set(args.only) - {part.name for part in parts})
        if unknown:
            names = ", ".join(repr(part.name) for part in parts)
            print(
                f"error: --only: no part named {', '.join(map(repr, unknown))}; expected one of {names}",
                file=sys.stderr,
            )
            shutil.rmtree(work, ignore_errors=True)
            return 2
        runs = any(name.startswith("vgg19") for name in args.only)  # which the warm-up serves
        parts = [part for part in parts if part.name in args.only or (part.name == "warm-up" and runs)]
    notes = [
        "Each part runs in its own process with its own time limit; logs in gpu_check_logs/.",
        "warm-up: the CGaP recipe on 2,000 images, untimed, so that Triton's kernel cache is warm for the runs.",
        "The vgg19_c100 runs train on random pixels: their wall times count, their accuracy does not.",
        "'CGaP, eager step' is the CGaP run with train.cuda_graphs=false: one launch per kernel, as before graphs.",
        "change overhead: surgery plus graph captures (compilations included) or, without graphs, compilations, "
        "as a share of the CGaP run's wall time.",
        "projected 160-epoch CGaP: the 4-epoch run's wall time per epoch × 160 (evaluations and checkpoints "
        "included; the real run's widths over time differ).",
    ]
    if args.policies:
        notes.append("policy runs: the CGaP run (compile.policy auto) again under never and always, graphed alike.")
    if args.change_cost:
        notes.append("change cost: benchmarks.change_cost (its own table: change_cost.md), means over 4 changes.")
    if dry:
        notes.insert(0, "DRY RUN on the CPU at tiny sizes: these figures check the plumbing, they measure nothing.")
    name = "gpu_check_dry_run" if dry else "gpu_check"

    def report(rows: list[dict[str, Any]], runs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        cgap, dense = runs.get("vgg19_c100 CGaP", {}), runs.get("vgg19_c100 dense", {})
        derived = derive(cgap, dense, runs.get("vgg19_c100 CGaP, eager step", {}))
        policies = {p: runs.get(f"vgg19_c100 CGaP, policy {p}", {}) for p in ("never", "always")}
        if cgap and all(policies.values()):
            best = min(run["wall_seconds"] for run in policies.values())
            derived["auto_over_best_policy_wall"] = cgap["wall_seconds"] / best
            derived["line"] += (
                f"; compile.policy auto/best of never, always {derived['auto_over_best_policy_wall']:.2f}"
            )
        table = list(rows)
        if derived:
            line = derived.pop("line")
            table.append({"part": "derived", "status": "", "seconds": "", "limit_s": "", "figures": line})
        write_results(
            name,
            table,
            {**env, **derived},
            title="make gpu-check",
            columns=COLUMNS,
            notes=notes,
            results_dir=args.results_dir,
        )
        return table

    try:
        rows, runs = run_parts(parts, logs, dry, steps_json, args.budget_s, report)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the random CIFAR files and the runs: timing only
    table = report(rows, runs)
    print_table("make gpu-check" + (" (dry run)" if dry else ""), table, COLUMNS)
    failed = [r["part"] for r in rows if r["status"] not in ("ok", "") and not r["status"].startswith("skipped")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

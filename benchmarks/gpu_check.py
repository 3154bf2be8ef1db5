"""``make gpu-check``: everything a GPU machine should confirm, in one command of at most eight minutes.

Runs from the source tree with the torch and triton already installed (no network, no pip install), each part
in its own process with its own time limit, so that one failure or hang does not eat the rest:

1. kernel tests on CUDA — the interpreter's parametrised cases with tensors on the GPU
   (``CGAP_TEST_DEVICE=cuda``), plus the sizes the interpreter cannot afford and the CUDA-graph step;
2. kernel benchmarks (``benchmarks.run --parts kernels``);
3. the training step eager / compiled / as one CUDA graph at batch 128 and 512 (``benchmarks.step_modes``);
4. ``recipes/vgg19_c100.toml`` for 4 epochs, growing and pruning every 0.25 epoch, and its dense baseline, on
   CIFAR-100-sized files in the official format filled with random pixels (timing only: the accuracy means
   nothing);

then writes ``benchmarks/results/<gpu>/gpu_check.{json,csv,md}`` (and each part's log beside them) and prints a
short table last. ``--dry-run`` runs the same plumbing on the CPU at tiny sizes (kernel tests that need no GPU,
the step benchmark on a tiny VGG, the recipe on 200 images at 1/8 width) — ``make test`` runs it, so it cannot rot.

    make gpu-check                                   # = PYTHONPATH=. python3 -m benchmarks.gpu_check
    python -m benchmarks.gpu_check --dry-run --results-dir /tmp/check
"""

from __future__ import annotations

import argparse
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


def run_summary_figures(out: Path) -> tuple[str, dict[str, Any]]:
    try:
        s = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return "", {}
    figures = (
        f"wall {s['wall_seconds']:.1f} s, {s['structural_changes']} changes, train MACs {s['train_macs_ratio']:.2f} "
        f"of dense, compile {s['compile_seconds']:.1f} s ({s['recompiles']}), graphs {s.get('cuda_graph_captures', 0)}"
    )
    return figures, s


def run_parts(parts: list[Part], logs: Path, dry: bool, steps_json: Path) -> list[dict[str, Any]]:
    rows = []
    for part in parts:
        print(f"gpu-check: {part.name} (limit {part.limit_s} s) ...", flush=True)
        row = run_part(part, logs, dry)
        if part.name == "kernel tests" and "log" in row:
            row["figures"] = pytest_figures(Path(row["log"]))
        elif part.name == "training step" and steps_json.is_file():
            row["figures"] = "; ".join(
                f"{s['mode']} b{s['batch']} {s['images_per_s']:.0f} img/s" for s in json.loads(steps_json.read_text())
            )
        rows.append(row)
        print(f"  {row['status']} in {row['seconds']} s {row['figures']}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: check the plumbing")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
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
    if not dry:
        kernel_tests = ["tests/test_channel_stats.py", "tests/test_gather_channels.py", *kernel_tests]
    test_env = {"CGAP_TEST_DEVICE": "cpu" if dry else "cuda"}
    data = work / "data"
    write_cifar100(data, 200 if dry else 50_000, 50 if dry else 10_000)
    run_args = [f"data.root={data}", "train.epochs=1" if dry else "train.epochs=4", "dashboard.enabled=false"]
    run_args += ["cgap.grow.every=0.25", "cgap.prune.every=0.25", "checkpoint.every=1", "train.log_every=20"]
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
    parts = [
        Part("kernel tests", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", *kernel_tests], 140, test_env),
        Part(
            "kernel benchmarks",
            [py, "-m", "benchmarks.run", "--parts", "kernels", "--results-dir", str(args.results_dir)],
            80,
            needs_cuda=True,
        ),
        Part(
            "training step",
            [py, "-m", "benchmarks.step_modes", "--json", str(steps_json)] + (["--dry-run"] if dry else []),
            90,
        ),
        Part(
            "vgg19_c100 CGaP",
            [py, "-c", RANDOM_FILES_CLI, "recipe", "recipes/vgg19_c100.toml", *run_args, "--out", str(work / "cgap")],
            90 if dry else 100,
        ),
        Part(
            "vgg19_c100 dense",
            [
                py,
                "-c",
                RANDOM_FILES_CLI,
                "recipe",
                "recipes/vgg19_c100_dense.toml",
                *run_args,
                "--out",
                str(work / "dense"),
            ],
            90 if dry else 60,
        ),
    ]
    try:
        rows = run_parts(parts, logs, dry, steps_json)
        cgap_figures, cgap = run_summary_figures(work / "cgap")
        dense_figures, dense = run_summary_figures(work / "dense")
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the random CIFAR files and the runs: timing only
    rows[3]["figures"], rows[4]["figures"] = cgap_figures, dense_figures
    derived: dict[str, Any] = {}
    if cgap and dense:
        derived["cgap_over_dense_wall"] = cgap["wall_seconds"] / max(1e-9, dense["wall_seconds"])
        derived["projected_160_epoch_cgap_minutes"] = cgap["wall_seconds"] / cgap["epochs"] * 160 / 60
        rows.append(
            {
                "part": "derived",
                "status": "",
                "seconds": "",
                "limit_s": "",
                "figures": f"CGaP/dense wall {derived['cgap_over_dense_wall']:.2f}; projected 160-epoch CGaP "
                f"{derived['projected_160_epoch_cgap_minutes']:.1f} min",
            }
        )
    notes = [
        "Each part runs in its own process with its own time limit; logs in gpu_check_logs/.",
        "The vgg19_c100 runs train on random pixels: their wall times count, their accuracy does not.",
        "projected 160-epoch CGaP: the 4-epoch run's wall time per epoch × 160 (evaluations and checkpoints "
        "included; the real run's widths over time differ).",
    ]
    if dry:
        notes.insert(0, "DRY RUN on the CPU at tiny sizes: these figures check the plumbing, they measure nothing.")
    name = "gpu_check_dry_run" if dry else "gpu_check"
    write_results(
        name,
        rows,
        {**env, **derived},
        title="make gpu-check",
        columns=COLUMNS,
        notes=notes,
        results_dir=args.results_dir,
    )
    print_table("make gpu-check" + (" (dry run)" if dry else ""), rows, COLUMNS)
    failed = [r["part"] for r in rows if r["status"] not in ("ok", "") and not r["status"].startswith("skipped")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

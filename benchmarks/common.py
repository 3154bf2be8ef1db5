"""What every benchmark shares: a description of the machine, timers, and the result files.

Every result file carries the machine it was measured on (GPU or CPU model, core count, load average),
the torch and triton versions, the git commit and the UTC date, and lives in a folder named after the
machine, so numbers from different machines never land in one table.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import re
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parent.parent


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def load_average() -> float | None:
    """The 1-minute load average: on a shared machine, CPU timings taken under load are inflated."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def environment(device: torch.device) -> dict[str, Any]:
    """The machine and software a set of numbers belongs to."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "absent"
    env: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": device.type,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1m": load_average(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "commit": _git_commit(),
    }
    return env


def machine_label(env: dict[str, Any]) -> str:
    if env["gpu"]:
        return env["gpu"]
    return f"{env['cpu']} ({env['cpu_count']} cores, load {env['load_average_1m']})"


def machine_slug(env: dict[str, Any]) -> str:
    """Folder name for one machine's results: the GPU name, or ``cpu-`` and the CPU model."""
    name = env["gpu"] if env["gpu"] else f"cpu-{env['cpu']}"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60]


# ---------------------------------------------------------------------------------------------- timing


def cpu_median_seconds(fn: Callable[[], Any], *, warmup: int = 1, repeat: int = 5) -> float:
    """Median wall time of ``fn`` over ``repeat`` runs after ``warmup`` untimed ones (CPU; no sync needed)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gpu_median_ms(fn: Callable[[], Any], *, warmup_ms: int = 25, rep_ms: int = 200) -> tuple[float, float, float]:
    """(median, 20th, 80th percentile) milliseconds from ``triton.testing.do_bench``: warm-up excluded, the L2
    cache flushed before every run, CUDA events around each call."""
    from triton.testing import do_bench

    median, low, high = do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
    return median, low, high


def cuda_median_seconds(fn: Callable[[], Any], *, warmup: int = 3, repeat: int = 10) -> float:
    """Median seconds of a longer GPU call (a training step, a whole-model forward), synchronised around it."""

    def synced():
        fn()
        torch.cuda.synchronize()

    return cpu_median_seconds(synced, warmup=warmup, repeat=repeat)


def median_seconds(fn: Callable[[], Any], device: torch.device, *, warmup: int = 2, repeat: int = 5) -> float:
    if device.type == "cuda":
        return cuda_median_seconds(fn, warmup=warmup, repeat=repeat)
    return cpu_median_seconds(fn, warmup=warmup, repeat=repeat)


# ---------------------------------------------------------------------------------------------- results


def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued work (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forever(batches) -> Any:
    """A batch source's epochs one after the other, without end: ``next()`` gives a training batch."""
    epoch = 0
    while True:
        yield from batches.epoch(epoch)
        epoch += 1


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == 0:
            return "0"
        magnitude = abs(value)
        if magnitude >= 1000:
            return f"{value:,.0f}"
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10_000:
        return f"{value:,}"
    return "" if value is None else str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def write_results(
    name: str,
    rows: Sequence[dict[str, Any]],
    env: dict[str, Any],
    *,
    title: str,
    columns: Sequence[str],
    notes: Sequence[str] = (),
    results_dir: Path = RESULTS_DIR,
) -> list[Path]:
    """Write ``<results_dir>/<machine>/<name>.{json,csv,md}``; every file names the machine and versions."""
    folder = Path(results_dir) / machine_slug(env)
    folder.mkdir(parents=True, exist_ok=True)
    env = {**env, "load_average_1m_end": load_average()}
    paths = [folder / f"{name}.json", folder / f"{name}.csv", folder / f"{name}.md"]

    paths[0].write_text(json.dumps({"environment": env, "notes": list(notes), "rows": list(rows)}, indent=2) + "\n")

    env_columns = ["machine", "torch", "triton", "date"]
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with open(paths[1], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys + env_columns)
        writer.writeheader()
        stamp = {"machine": machine_label(env), "torch": env["torch"], "triton": env["triton"], "date": env["date"]}
        for row in rows:
            writer.writerow({**row, **stamp})

    header = (
        f"### {title}\n\n"
        f"Machine: {machine_label(env)} · torch {env['torch']} · triton {env['triton']} · "
        f"commit {env['commit']} · {env['date']}"
        + (f" · load average {env['load_average_1m']} → {env['load_average_1m_end']}" if not env["gpu"] else "")
        + "\n\n"
    )
    body = markdown_table(rows, columns)
    notes = list(notes)
    loads = [x for x in (env["load_average_1m"], env["load_average_1m_end"]) if x is not None]
    if not env["gpu"] and loads and max(loads) > (env["cpu_count"] or 1):
        notes.append(
            f"The load average reached {max(loads)} on {env['cpu_count']} cores while this was measured: other work "
            "shared the CPU, so these timings are inflated and noisy; counts (MACs, params) are unaffected."
        )
    tail = "".join(f"\n- {note}" for note in notes)
    paths[2].write_text(header + body + ("\n" + tail if tail else "") + "\n")
    return paths


def print_table(title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    print(f"\n{title}")
    print(markdown_table(rows, columns), flush=True)

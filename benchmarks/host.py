"""Host cost of one saliency step (CPU): the per-step work of ``SaliencyTracker.update`` on the Triton path.

A training step on a GPU is launch-bound at CIFAR batch sizes, so what the saliency update costs on the host
matters as much as the kernel. This measures that host work alone: full-width VGG-19 (16 convolutions) and
ResNet-110 (54 growable convolutions), CPU tensors, ``impl="triton"`` with the kernel launch replaced by a
no-op (``TRITON_INTERPRET=1`` is set while it runs only so that the Triton path accepts CPU tensors; the stub
means no kernel is interpreted). Per step, two ways:

- old: what the tracker did before plans: a ``model.get_parameter`` lookup per group, then the one-shot
  ``channel_stats`` (every argument checked, ``out`` overlap included; the descriptor table from its cache);
- plan: ``SaliencyTracker.update``, which resolves its weights once and runs a prepared ``ChannelStatsPlan``
  (an identity check of weights, gradients and buffers, then the launch).

Also timed: the pieces (the lookups, the one-shot call, ``plan.run``) and the building of a plan, as after a
structural change (table cache cleared). Each figure is the median of ``repeat`` timed calls after a warm-up.

    python -m benchmarks.host                # results under benchmarks/results/<machine>/host_saliency_step.*
    python -m benchmarks.host --repeat 200   # quicker
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from cgap_triton.kernels import ChannelStatsPlan, channel_stats

from cgap_triton.cgap import SaliencyTracker
from cgap_triton.models import VGG_CFGS, ModelSpec, build_model

from .common import RESULTS_DIR, environment, print_table, write_results

WORKLOADS = {
    "vgg19": ModelSpec("vgg", 100, 3, 32, tuple(VGG_CFGS["vgg19"])),
    "resnet110": ModelSpec("resnet110", 100),
}
TARGETS_US = {"vgg19": 30.0, "resnet110": 60.0}  # per saliency step, plan path, on the development CPU
COLUMNS = ["workload", "tensors", "path", "median_us", "p20_us", "p80_us", "old_over_this", "target_us"]


@contextlib.contextmanager
def stubbed_launch() -> Iterator[list[tuple]]:
    """The Triton path on CPU tensors with the kernel launch a no-op; yields the list of launch grids seen."""
    from cgap_triton.kernels import stats

    launches: list[tuple] = []

    class NoLaunch:
        def __getitem__(self, grid):
            launches.append(grid)
            return lambda *args, **kwargs: None

    kernel, interpret = stats._channel_l1_l2_wg_kernel, os.environ.get("TRITON_INTERPRET")
    stats._channel_l1_l2_wg_kernel = NoLaunch()
    os.environ["TRITON_INTERPRET"] = "1"  # read per call by resolve_impl: lets impl="triton" take CPU tensors
    try:
        yield launches
    finally:
        stats._channel_l1_l2_wg_kernel = kernel
        if interpret is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = interpret


def time_us(fn: Callable[[], Any], repeat: int, *, warmup: int = 20) -> tuple[float, float, float]:
    """(median, 20th, 80th percentile) microseconds of single calls of ``fn``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - start) / 1e3)
    median = statistics.median(times)
    if len(times) < 2:
        return median, median, median
    deciles = statistics.quantiles(times, n=10)
    return median, deciles[1], deciles[7]


def old_update(model, tracker: SaliencyTracker, step: int) -> None:
    """``SaliencyTracker.update`` as it was: parameters looked up by name and every argument checked, each step."""
    if step % tracker.every:
        return
    weights = [model.get_parameter(g.saliency) for g in model.groups]
    grads = [w.grad for w in weights]
    if any(g is None for g in grads):
        return
    momentum = tracker.momentum if tracker.updates else None
    out = [tracker.buffers[g.name] for g in model.groups]
    channel_stats(weights, grads, out=out, momentum=momentum, impl="triton")
    tracker.updates += 1


def bench_saliency_step(
    workloads: dict[str, ModelSpec] | None = None, *, repeat: int = 2000, warmup: int = 20
) -> list[dict[str, Any]]:
    """Rows of host microseconds per saliency step and per piece, for each workload (see the module docstring)."""
    rows = []
    for name, spec in (workloads or WORKLOADS).items():
        rows += _bench_workload(name, spec, repeat, warmup)
    return rows


def _bench_workload(name: str, spec: ModelSpec, repeat: int, warmup: int) -> list[dict[str, Any]]:
    from cgap_triton.kernels import stats

    model = build_model(spec, None, device="cpu")
    weights = [model.get_parameter(g.saliency) for g in model.groups]
    for w in weights:  # the tracker reads only these gradients
        w.grad = torch.randn_like(w) * 1e-3
    grads = [w.grad for w in weights]
    with stubbed_launch() as launches:
        tracker = SaliencyTracker(model, "taylor", 0.9, impl="triton")
        old_tracker = SaliencyTracker(model, "taylor", 0.9, impl="triton")
        out = list(tracker.buffers.values())
        steps = iter(range(10**9))
        old = time_us(lambda: old_update(model, old_tracker, next(steps)), repeat, warmup=warmup)
        new = time_us(lambda: tracker.update(next(steps)), repeat, warmup=warmup)
        plan = tracker._plan
        if plan is None or not plan.matches(weights, grads, out) or not launches:
            raise RuntimeError(f"{name}: the tracker did not run a plan on the stubbed Triton path")

        def build():
            stats._table_cache.clear()  # as after a structural change: new addresses, a new table
            ChannelStatsPlan(weights, grads, out=out, impl="triton")

        pieces = {
            "get_parameter lookups (old, per step)": lambda: [model.get_parameter(g.saliency) for g in model.groups],
            "channel_stats one-shot (old, per step)": lambda: channel_stats(
                weights, grads, out=out, momentum=0.9, impl="triton"
            ),
            "plan.run (per step)": lambda: plan.run(0.9),
            "plan.matches (per step)": lambda: plan.matches(weights, grads, out),
            "ChannelStatsPlan build (per structural change)": build,
        }
        timed = {"old step: get_parameter + channel_stats": old, "plan step: SaliencyTracker.update": new}
        timed |= {piece: time_us(fn, max(1, repeat // 10), warmup=2) for piece, fn in pieces.items()}
    print(f"    {name}: old {old[0]:.1f} µs, plan {new[0]:.1f} µs per step", flush=True)
    return [
        {
            "workload": name,
            "tensors": len(weights),
            "path": path,
            "median_us": median,
            "p20_us": low,
            "p80_us": high,
            "old_over_this": old[0] / median if path.startswith(("old step", "plan step")) else None,
            "target_us": TARGETS_US.get(name) if path.startswith("plan step") else None,
        }
        for path, (median, low, high) in timed.items()
    ]


NOTES = [
    "Host work only: CPU tensors, impl='triton', the kernel launch replaced by a no-op (Triton's own launch "
    "overhead, and the GPU time, are not in these figures).",
    "old step: model.get_parameter per group + one-shot channel_stats (all checks, cached table); plan step: "
    "SaliencyTracker.update with its prepared ChannelStatsPlan (identity check + launch).",
    "Targets (plan step, development CPU): VGG-19 ≤ 30 µs, ResNet-110 ≤ 60 µs.",
]


def run(
    env: dict[str, Any],
    *,
    repeat: int = 2000,
    results_dir: Path = RESULTS_DIR,
    workloads: dict[str, ModelSpec] | None = None,
) -> list[Path]:
    """Measure (see :func:`bench_saliency_step`), print the table and write ``host_saliency_step.{json,csv,md}``."""
    rows = bench_saliency_step(workloads, repeat=repeat)
    title = "Host cost of one saliency step (CPU, kernel launch stubbed): old per-step path against the plan"
    print_table(title, rows, COLUMNS)
    return write_results(
        "host_saliency_step", rows, env, title=title, columns=COLUMNS, notes=NOTES, results_dir=results_dir
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.host", description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=2000, help="timed calls per figure (median)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    paths = run(environment(device), repeat=args.repeat, results_dir=args.results_dir)
    print(f"\nresults: {paths[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

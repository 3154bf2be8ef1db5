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

A second table: the host cost of one structural change of VGG-19 through ``apply_width_change`` (CPU tensors,
``impl="triton"``, launch stubbed the same way): a growth step from the seed (rate 0.25, copies of the most
salient units, noise 0.01) and a pruning step at full width (15 % of the units), as ``benchmarks.training``
plans them. Two paths: old, the per-group surgery (one ``gather_channels_many`` call per group, kept below as
``per_group_apply_width_change``), and batched, today's surgery (every group planned into one ``GatherBatch``,
one launch, one more for the moments behind a growth step's noise, results assigned); the batch's run alone is
timed too. At real widths the outputs are MB-sized CPU allocations that a GPU's caching allocator would not pay
for, so the change is also timed on VGG-19 at 1/8 width: the same 16 groups and tensors, the same host work,
next to no data. One thread (``torch.set_num_threads(1)``): host work is serial, and a shared machine's
thread pool would add its own noise.

    python -m benchmarks.host                # results under benchmarks/results/<machine>/host_saliency_step.*
    python -m benchmarks.host --repeat 200   # quicker                            and host_width_change.*
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import torch
from cgap_triton.kernels import (
    ChannelStatsPlan,
    GroupOutput,
    channel_stats,
    gather_channels_groups,
    gather_channels_many,
)
from cgap_triton.kernels._groups import GatherBatch

import cgap_triton.cgap.surgery as surgery
from cgap_triton.cgap import SaliencyTracker, WidthChange
from cgap_triton.cgap.change import GroupChange
from cgap_triton.models import VGG_CFGS, ModelSpec, build_model

from .common import RESULTS_DIR, environment, print_table, write_results
from .kernels import as_gather_groups
from .training import Workload, change_cost_plan, vgg19_cifar100, with_noise

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


# ------------------------------------------------------------------------------------------- width change

CHANGE_TARGET_MS = 1.0  # per VGG-19 change, batched surgery, on the development CPU
CHANGE_COLUMNS = ["workload", "change", "groups", "tensors", "path", "median_ms", "p20_ms", "p80_ms", "launches"]
CHANGE_COLUMNS += ["old_over_this", "target_ms"]
OLD_PATH = "old: per-group gather_channels_many"
BATCHED_PATH = "batched: apply_width_change"
BATCHED_CALL = "batched: the gather call alone (GatherBatch.run)"
CHECKED_CALL = "checked: gather_channels_groups (the same groups)"


@dataclasses.dataclass(frozen=True)
class ChannelsLast:
    """A workload whose conv weights (and their momentum) are channels_last, as the GPU recipes keep them."""

    workload: Workload


def change_workloads() -> dict[str, Workload | ChannelsLast]:
    """VGG-19 (CIFAR-100), and the same net at 1/8 width (same groups and tensors, next to no data), contiguous
    and channels_last."""
    vgg19 = vgg19_cifar100()
    cfg = tuple(c if c == "M" else c // 8 for c in vgg19.spec.cfg)
    narrow = dataclasses.replace(vgg19, name="vgg19 at 1/8 width", spec=dataclasses.replace(vgg19.spec, cfg=cfg))
    narrow = dataclasses.replace(narrow, round_to=1)
    return {"vgg19": vgg19, "vgg19/8": narrow, "vgg19/8 channels_last": ChannelsLast(narrow)}


@contextlib.contextmanager
def stubbed_gather() -> Iterator[list[tuple]]:
    """The Triton gather on CPU tensors with the kernel launch a no-op; yields the list of launch grids seen.
    The outputs are allocated as usual and never written."""
    from cgap_triton.kernels import gather

    launches: list[tuple] = []

    class NoLaunch:
        def __getitem__(self, grid):
            launches.append(grid)
            return lambda *args, **kwargs: None

    kernel, interpret = gather._gather_channels_kernel, os.environ.get("TRITON_INTERPRET")
    gather._gather_channels_kernel = NoLaunch()
    os.environ["TRITON_INTERPRET"] = "1"  # read per call by resolve_impl: lets impl="triton" take CPU tensors
    try:
        yield launches
    finally:
        gather._gather_channels_kernel = kernel
        if interpret is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = interpret


@torch.no_grad()
def per_group_apply_width_change(model, change: WidthChange, *, optimizer=None, saliency=None, impl="auto") -> None:
    """``apply_width_change`` as it was before the batched gather (copy_zero_out, split, random_zero_out): group by
    group, the tensors moved to the device, the std of a grown weight read on the host, one
    ``gather_channels_many`` call, the results assigned before the next group reads them."""
    groups = {g.name: g for g in model.groups}
    for p in model.parameters():
        p.grad = None
    for name, group_change in change.groups.items():
        _per_group(model, groups[name], group_change, change.kind, optimizer, saliency, impl)
    model.sync_shapes()


def _per_group(model, group, change: GroupChange, kind, optimizer, saliency, impl) -> None:
    init, noise, seed = change.init, change.noise, change.seed
    device = model.get_parameter(group.saliency).device
    index, new = change.index.to(device), change.new.to(device)
    old = new.logical_not().float()
    growing = kind == "grow" and bool(new.any())
    shared = torch.zeros_like(old)
    if growing and init != "random_zero_out":
        parents = index[new]
        shared[new] = 0.5
        shared[parents] = 0.5
    half = torch.where(shared > 0, shared, torch.ones_like(shared))
    tensors, dims, scales, stds, targets = [], [], [], [], []

    def add(tensor, dim, target, scale=None, std=0.0):
        tensors.append(tensor)
        dims.append(dim)
        scales.append(scale)
        stds.append(std)
        targets.append(target)

    params = dict(model.named_parameters())
    for qualname, dim in group.producers:
        t = model.tensor(qualname)
        std = 0.0
        if growing and qualname == group.saliency:
            if init == "random_zero_out":
                std = new.float() * math.sqrt(2.0 / max(1, t.shape[0] * math.prod(t.shape[2:])))
            elif noise > 0:
                weight_std = float(t.float().std()) if t.numel() > 1 else 1.0
                weight_std = weight_std if math.isfinite(weight_std) else 0.0  # unwritten output under the stub
                std = new.float() * (noise * weight_std)
        add(t, dim, ("tensor", qualname), None, std)
    for qualname, dim in group.consumers:
        add(model.tensor(qualname), dim, ("tensor", qualname), (half if init == "split" else old) if growing else None)
    if optimizer is not None:
        for qualname, dim in group.producers + group.consumers:
            p = params.get(qualname)
            if p is None or p not in optimizer.state:
                continue
            for key, value in optimizer.state[p].items():
                if isinstance(value, torch.Tensor) and value.shape == p.shape:
                    add(value, dim, ("optim", p, key), old if growing else None)
    if saliency is not None and group.name in saliency:
        add(saliency[group.name], 0, ("saliency", group.name), half if growing else None)
    if init == "random_zero_out" and growing:
        index = torch.where(new, torch.full_like(index, -1), index)
    results = gather_channels_many(tensors, dims, index, scales=scales, noise_stds=stds, seed=seed, impl=impl)
    for target, result in zip(targets, results):
        if target[0] == "tensor":
            module_name, _, attr = target[1].rpartition(".")
            surgery._assign(model.get_submodule(module_name), attr, result)
        elif target[0] == "optim":
            optimizer.state[target[1]][target[2]] = result
        else:
            saliency[target[1]] = result
    if init == "random_zero_out" and growing:
        for qualname, _ in group.producers:
            if qualname.endswith(("bn.weight", "running_var")):
                model.tensor(qualname).data[new] = 1.0


class _Snapshot:
    """A model's tensors, optimizer state and saliency buffers, to be put back before each timed change."""

    def __init__(self, model, optimizer, saliency: dict[str, torch.Tensor]):
        self.model, self.optimizer, self.saliency = model, optimizer, saliency
        self.params = [(p, p.data) for p in model.parameters()]
        self.buffers = [(m, k, b) for m in model.modules() for k, b in m._buffers.items() if b is not None]
        self.state = {p: dict(state) for p, state in optimizer.state.items()}
        self.buffers_saliency = dict(saliency)

    def restore(self) -> None:
        for p, data in self.params:
            p.data = data
        for module, key, buffer in self.buffers:
            module._buffers[key] = buffer
        for p, state in self.state.items():
            self.optimizer.state[p] = dict(state)
        self.saliency.clear()
        self.saliency.update(self.buffers_saliency)
        self.model.sync_shapes()


def time_ms(fn: Callable[[], Any], setup: Callable[[], Any], repeat: int, warmup: int) -> tuple[float, float, float]:
    """(median, 20th, 80th percentile) milliseconds of ``fn``, ``setup`` run untimed before each call."""
    times = []
    for i in range(warmup + repeat):
        setup()
        start = time.perf_counter_ns()
        fn()
        if i >= warmup:
            times.append((time.perf_counter_ns() - start) / 1e6)
    median = statistics.median(times)
    if len(times) < 2:
        return median, median, median
    deciles = statistics.quantiles(times, n=10)
    return median, deciles[1], deciles[7]


def _unrun(batch: GatherBatch) -> GatherBatch:
    """A batch with the same groups as ``batch`` (which has run), ready to run again."""
    again = GatherBatch()
    for group in batch.checked.groups:
        for e in group.entries:
            source = e.source if e.consumes is None else GroupOutput(*e.consumes)
            again.add(source, e.dim, e.scale, e.std, e.std_of_input)
        again.close(group.index, group.seed)
    return again


def bench_width_change(
    workloads: dict[str, Workload | ChannelsLast] | None = None, *, repeat: int = 50, warmup: int = 3
) -> list[dict[str, Any]]:
    """Rows of host milliseconds per structural change, old per-group path against the batched one (see the
    module docstring)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = []
        for name, workload in (workloads or change_workloads()).items():
            for kind in ("grow", "prune"):
                rows += _bench_change(name, workload, kind, repeat, warmup)
        return rows
    finally:
        torch.set_num_threads(threads)


def _bench_change(
    name: str, workload: Workload | ChannelsLast, kind: str, repeat: int, warmup: int
) -> list[dict[str, Any]]:
    channels_last = isinstance(workload, ChannelsLast)
    workload = workload.workload if channels_last else workload
    widths, plan = change_cost_plan(workload, kind)
    torch.manual_seed(0)
    model = build_model(workload.spec, widths, device="cpu")
    if channels_last:  # (the momentum follows: it starts as a copy of the gradient, which keeps the layout)
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for p in model.parameters():  # SGD momentum exists, as in training; no gradients left to free
        p.grad = torch.zeros_like(p)
    optimizer.step()
    tracker = SaliencyTracker(model, "taylor", 0.9)
    for buffer in tracker.buffers.values():
        buffer.uniform_()
    change = plan(model.widths, tracker.scores())
    change = with_noise(change, 0.01) if kind == "grow" else change
    for p in model.parameters():
        p.grad = None
    saliency = tracker.buffers
    snapshot = _Snapshot(model, optimizer, saliency)
    captured: list[GatherBatch] = []
    public: list[list] = []  # the captured batch as the public call's groups (the noise's std as its value)

    class Capturing(GatherBatch):
        __slots__ = ()

        def run(self, impl="auto"):
            captured.append(self)
            if not public:
                public.append(as_gather_groups(self)[0])
            return super().run(impl)

    timed, launches = {}, {}
    with stubbed_gather() as grids:
        for path, apply in ((OLD_PATH, per_group_apply_width_change), (BATCHED_PATH, surgery.apply_width_change)):

            def one_change(apply=apply):
                apply(model, change, optimizer=optimizer, saliency=saliency, impl="triton")

            snapshot.restore()
            surgery.GatherBatch = Capturing
            try:
                before = len(grids)
                one_change()
                launches[path] = len(grids) - before
            finally:
                surgery.GatherBatch = GatherBatch
            timed[path] = time_ms(one_change, snapshot.restore, repeat, warmup)
        snapshot.restore()
        if len(captured) != 1:
            raise RuntimeError(f"{name} {kind}: surgery ran {len(captured)} batches, expected one")
        batch = captured[0]
        fresh: list[GatherBatch] = []
        timed[BATCHED_CALL] = time_ms(
            lambda: fresh[-1].run("triton"), lambda: fresh.append(_unrun(batch)), repeat, warmup
        )
        launches[BATCHED_CALL] = launches[BATCHED_PATH]
        before = len(grids)
        gather_channels_groups(public[0], impl="triton")
        launches[CHECKED_CALL] = len(grids) - before
        checked = partial(gather_channels_groups, public[0], impl="triton")
        timed[CHECKED_CALL] = time_ms(checked, lambda: None, repeat, warmup)
    groups = batch.checked.groups
    snapshot.restore()
    tensors = sum(len(g.entries) for g in groups)
    old = timed[OLD_PATH][0]
    print(
        f"    {name} {kind}: {len(groups)} groups, {tensors} tensors: old {old:.2f} ms, batched "
        f"{timed[BATCHED_PATH][0]:.2f} ms ({timed[BATCHED_CALL][0]:.2f} ms in the gather call)",
        flush=True,
    )
    return [
        {
            "workload": name,
            "change": kind,
            "groups": len(groups),
            "tensors": tensors,
            "path": path,
            "median_ms": median,
            "p20_ms": low,
            "p80_ms": high,
            "launches": launches[path],
            "old_over_this": None if path in (BATCHED_CALL, CHECKED_CALL) else old / median,
            "target_ms": CHANGE_TARGET_MS if path == BATCHED_PATH else None,
        }
        for path, (median, low, high) in timed.items()
    ]


CHANGE_NOTES = [
    "Host work only: CPU tensors, impl='triton', the kernel launch replaced by a no-op (outputs allocated, never "
    "written); one thread.",
    "old: the per-group surgery (one gather_channels_many per group, the noise std read on the host); batched: "
    "apply_width_change planning every group into one GatherBatch (no argument checks), one run, assigning the "
    "results; checked: the public gather_channels_groups on the same groups (every argument checked; the noise's "
    "std given as its value, so no moments launch).",
    "At real widths the outputs are MB-sized CPU allocations (page faults a GPU's caching allocator does not "
    "have): 'vgg19/8' is the same change structure with next to no data, and host cost is read from it.",
    "'channels_last': conv weights and their momentum in that layout, as the GPU recipes keep them; their rows "
    "take the general layout path (strided inner levels) instead of the contiguous one.",
    "The noise's std on a grown filter is the device's work (a moments launch), not the host's: no row here "
    "computes it.",
    f"Target (batched, development CPU): ≤ {CHANGE_TARGET_MS:g} ms per VGG-19 change.",
]


def run(
    env: dict[str, Any],
    *,
    repeat: int = 2000,
    results_dir: Path = RESULTS_DIR,
    workloads: dict[str, ModelSpec] | None = None,
    change_workloads: dict[str, Workload] | None = None,
    change_repeat: int | None = None,
) -> list[Path]:
    """Measure (see :func:`bench_saliency_step` and :func:`bench_width_change`), print the tables and write
    ``host_saliency_step.{json,csv,md}`` then ``host_width_change.{json,csv,md}``; returns those six paths."""
    rows = bench_saliency_step(workloads, repeat=repeat)
    title = "Host cost of one saliency step (CPU, kernel launch stubbed): old per-step path against the plan"
    print_table(title, rows, COLUMNS)
    paths = write_results(
        "host_saliency_step", rows, env, title=title, columns=COLUMNS, notes=NOTES, results_dir=results_dir
    )
    change_rows = bench_width_change(change_workloads, repeat=change_repeat or max(3, repeat // 40))
    title = "Host cost of one structural change (CPU, kernel launch stubbed): per-group gathers against one batch"
    print_table(title, change_rows, CHANGE_COLUMNS)
    return paths + write_results(
        "host_width_change",
        change_rows,
        env,
        title=title,
        columns=CHANGE_COLUMNS,
        notes=CHANGE_NOTES,
        results_dir=results_dir,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.host", description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=2000, help="timed calls per figure (median)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    paths = run(environment(device), repeat=args.repeat, results_dir=args.results_dir)
    print(f"\nresults: {paths[2]}, {paths[5]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

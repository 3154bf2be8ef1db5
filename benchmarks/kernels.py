"""Kernel benchmarks (GPU): ``channel_stats`` and ``gather_channels_many`` against the code a user would write.

Each op is timed four ways with ``triton.testing.do_bench`` (median; warm-up excluded; L2 flushed before each
run): ours (the Triton kernel, called as the trainer calls it), (a) plain per-layer PyTorch, (b) the same
PyTorch under ``torch.compile``, (c) a device-to-device copy moving the same number of bytes, the practical
limit. Each is reported as time, GB/s of the bytes the op must move, and percent of the copy's GB/s.
``channel_stats`` is timed three ways of ours: the public call (every check, every call), the prepared
``ChannelStatsPlan.run`` the trainer makes every step (its row is "ours"), and that run replayed from a CUDA
graph, which leaves the kernel's device time alone: the plan's time over the replay's is what a call costs
over its kernel.

Bytes moved: ``channel_stats`` reads every weight and gradient element once (its ``[C, 4]`` outputs are a
rounding error); a gather writes every output element and reads one source element per live output slice.
The copy baseline copies a buffer of half that many bytes (it reads and writes it), so it moves the same.

Workloads: ``channel_stats`` over the trainer's call — the producing conv weight of every channel group and
its gradient, with the fused EMA — of VGG-19 and ResNet-110 at full width (CIFAR-100 heads), fp32 and bf16.
``gather_channels_many`` over a whole structural change of VGG-19 group by group (conv weight, BN γ/β/running
statistics, the consumer's input columns, their SGD momentum and the saliency buffer; a conv weight that one
group's consumer columns and the next group's rows both rewrite goes through two calls, as surgery did before the
batched form), and beside it the batched ``gather_channels_groups`` (the call surgery makes, as a ``GatherBatch``:
the same change in one launch, each such conv weight gathered once along both dims, the intermediate never
stored; its row keeps the per-group byte count, so its GB/s is effective). The groups are captured from a real
``apply_width_change``: a growth step from the seed (rate 0.25, copies of the most salient units plus noise)
and a pruning step at full width (15 % of the units).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from cgap_triton.kernels import (
    ChannelStatsPlan,
    GatherGroup,
    GroupOutput,
    channel_stats,
    gather_channels_groups,
    gather_channels_many,
    reference,
)
from cgap_triton.kernels._groups import GatherBatch, host_vector

import cgap_triton.cgap.surgery as surgery
from cgap_triton.models import VGG_CFGS, ModelSpec, build_model

from .common import gpu_median_ms
from .training import Trainer, Workload, change_cost_plan, with_noise

TARGETS = {"copy_fraction": 0.80, "vs_torch": 10.0, "vs_compiled": 2.0}  # channel_stats on VGG-19, H100
CALL_OVER_DEVICE = 1.2  # a prepared channel_stats call: at most this many times its kernel's device time
CHANGE_GATHER_MS = 1.0  # a VGG-19 growth or pruning change's gather, as surgery calls it
SURGERY_GATHER = "triton batched, unchecked (surgery's)"


# ------------------------------------------------------------------------------------------- channel_stats


def torch_channel_stats(weights, grads, outs, momentum: float) -> None:
    """What a user writes: per layer, the four sums over everything but dim 0, then the EMA."""
    for w, g, out in zip(weights, grads, outs):
        w32, g32 = w.float().flatten(1), g.float().flatten(1)
        product = w32 * g32
        new = torch.stack([w32.abs().sum(1), (w32 * w32).sum(1), product.sum(1), product.abs().sum(1)], 1)
        out.mul_(momentum).add_(new, alpha=1.0 - momentum)


def stats_inputs(arch: str, dtype: torch.dtype, device: torch.device):
    spec = ModelSpec("vgg", 100, 3, 32, tuple(VGG_CFGS["vgg19"])) if arch == "vgg19" else ModelSpec(arch, 100)
    model = build_model(spec, None, device=device)
    weights = [model.get_parameter(g.saliency).detach().to(dtype) for g in model.groups]
    grads = [torch.randn_like(w) * 1e-3 for w in weights]
    outs = [torch.zeros(w.shape[0], 4, device=device) for w in weights]
    return weights, grads, outs


def _row(op, workload, dtype, impl, ms, low, high, nbytes, copy_gbps) -> dict[str, Any]:
    gbps = nbytes / (ms * 1e-3) / 1e9
    return {
        "op": op,
        "workload": workload,
        "dtype": str(dtype).removeprefix("torch."),
        "impl": impl,
        "median_us": ms * 1e3,
        "p20_us": low * 1e3,
        "p80_us": high * 1e3,
        "bytes": nbytes,
        "gb_per_s": gbps,
        "pct_of_copy": 100 * gbps / copy_gbps if copy_gbps else None,
    }


def _copy_of(nbytes: int, device: torch.device) -> Callable[[], Any]:
    """A copy that moves ``nbytes`` in total: reads and writes ``nbytes / 2``."""
    src = torch.empty(max(1, nbytes // 2), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


def _time_all(
    op, workload, dtype, nbytes, impls: dict[str, Callable[[], Any]], device, ours: str = "triton"
) -> list[dict[str, Any]]:
    copy_ms = gpu_median_ms(_copy_of(nbytes, device))
    copy_gbps = nbytes / (copy_ms[0] * 1e-3) / 1e9
    rows = [_row(op, workload, dtype, "copy (limit)", *copy_ms, nbytes, copy_gbps)]
    for name, fn in impls.items():
        rows.append(_row(op, workload, dtype, name, *gpu_median_ms(fn), nbytes, copy_gbps))
        print(f"    {op} {workload} {rows[-1]['dtype']:8s} {name:16s} {rows[-1]['median_us']:9.1f} µs", flush=True)
    reference = next(r for r in rows if r["impl"] == ours)
    for row in rows:
        row["ours_speedup"] = row["median_us"] / reference["median_us"]
    return rows


def _graphed(fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` captured once in a CUDA graph (after a warm-up on a side stream); returns the replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def bench_channel_stats(device: torch.device) -> list[dict[str, Any]]:
    rows = []
    compiled = torch.compile(torch_channel_stats)
    for arch in ("vgg19", "resnet110"):
        for dtype in (torch.float32, torch.bfloat16):
            weights, grads, outs = stats_inputs(arch, dtype, device)
            check = [o.clone() for o in outs]
            channel_stats(weights, grads, out=outs, momentum=0.9)
            torch_channel_stats(weights, grads, check, 0.9)
            for i, (a, b) in enumerate(zip(outs, check)):
                if not torch.allclose(a, b, rtol=1e-3, atol=1e-5):
                    raise RuntimeError(f"channel_stats {arch} {dtype}: tensor {i} disagrees with torch; not timing it")
            nbytes = sum(w.numel() * w.element_size() + g.numel() * g.element_size() for w, g in zip(weights, grads))
            plan = ChannelStatsPlan(weights, grads, out=outs)
            impls = {
                "triton plan": partial(plan.run, 0.9),
                "triton plan, graph replay": _graphed(partial(plan.run, 0.9)),
                "triton call": partial(channel_stats, weights, grads, out=outs, momentum=0.9),
                "torch (a)": partial(torch_channel_stats, weights, grads, outs, 0.9),
                "torch.compile (b)": partial(compiled, weights, grads, outs, 0.9),
            }
            rows += _time_all("channel_stats", arch, dtype, nbytes, impls, device, ours="triton plan")
    return rows


# ------------------------------------------------------------------------------------------- gather


def as_gather_groups(batch: GatherBatch) -> tuple[list[GatherGroup], dict[tuple[int, int], tuple]]:
    """A batch surgery built, as the arguments of the public ``gather_channels_groups``, and its entries' noise
    relative to the std of their input (``(std, std_of_input)`` by (group, position)). A relative std becomes the value
    it stands for, ``std · float32(c · std(input))``, the inputs computed by the torch twin. Tensors are detached:
    surgery reassigns each Parameter's .data in place, which would reshape a kept reference."""
    groups, relative, values = [], {}, []
    replay = any(e.std_of_input for group in batch.checked.groups for e in group.entries)  # inputs needed
    for g, group in enumerate(batch.checked.groups):
        tensors, inputs, dims, scales, stds = [], [], [], [], []
        for k, e in enumerate(group.entries):
            tensors.append(GroupOutput(*e.consumes) if e.source is None else e.source.detach())
            if e.source is not None:
                inputs.append(tensors[-1])
            else:  # an earlier group's output, as the twin computes it (only when a relative std needs it)
                inputs.append(values[e.consumes[0]][e.consumes[1]] if replay else None)
            dims.append(e.dim)
            scales.append(None if e.scale is None else host_vector(e.scale))
            std = e.std if type(e.std) is float else host_vector(e.std)
            if e.std_of_input and (isinstance(std, torch.Tensor) or std):
                relative[g, k] = (std, e.std_of_input)
                factor = (inputs[-1].float().std().double() * e.std_of_input).float()
                vector = std if isinstance(std, torch.Tensor) else torch.full((group.length,), std)
                std = vector.to(factor.device).float() * factor
            stds.append(std)
        if replay:  # the group's outputs, read as inputs by later groups (the torch twin's values)
            index = group.index.to(inputs[0].device)
            on_device = [None if s is None else s.to(index.device) for s in scales]
            noise = [s.to(index.device) if isinstance(s, torch.Tensor) else s for s in stds]
            values.append(
                reference.gather_channels_many(inputs, dims, index, scales=on_device, noise_stds=noise, seed=group.seed)
            )
        groups.append(GatherGroup(tensors, dims, group.index, scales, stds, group.seed))
    return groups, relative


def capture_groups(workload: Workload, kind: str, device: torch.device) -> tuple[list, dict, Any]:
    """The ``gather_channels_groups`` call of a real growth or pruning step (its groups), its entries' noise
    relative to their input's std (see :func:`as_gather_groups`), and the change."""
    widths, plan = change_cost_plan(workload, kind)
    trainer = Trainer(workload, widths, device)
    trainer.step()  # SGD momentum and saliency exist, as in training
    change = plan(trainer.model.widths, trainer.tracker.scores())
    captured: list[GatherGroup] = []
    relative: dict[tuple[int, int], tuple] = {}

    class Recording(GatherBatch):
        __slots__ = ()

        def run(self, impl="auto"):
            groups, relatives = as_gather_groups(self)
            relative.update({(len(captured) + g, k): c for (g, k), c in relatives.items()})
            captured.extend(groups)
            return super().run(impl)

    surgery.GatherBatch = Recording
    try:
        surgery.apply_width_change(
            trainer.model, with_noise(change, 0.01), optimizer=trainer.optimizer, saliency=trainer.tracker.buffers
        )
    finally:
        surgery.GatherBatch = GatherBatch
    return captured, relative, change


def capture_change(workload: Workload, kind: str, device: torch.device) -> list[dict[str, Any]]:
    """The change of :func:`capture_groups` as ``gather_channels_many`` calls (one per group; an output a later
    group reads again is computed first and passed on, as surgery did group by group), with what a user needs to
    write the same change by hand: the old width and, for growth, the parents of the new units. The groups
    themselves are kept in ``calls[0]["groups"]``, and surgery's relative noise in ``calls[0]["relative"]``."""
    groups, relative, change = capture_groups(workload, kind, device)
    calls, outputs = [], []

    def on_device(value):
        return value.to(device) if isinstance(value, torch.Tensor) else value

    for group in groups:
        tensors = [outputs[t.group][t.position] if isinstance(t, GroupOutput) else t for t in group.tensors]
        index, scales, stds = on_device(group.index), [on_device(s) for s in group.scales], group.noise_stds
        stds = [on_device(s) for s in stds]
        calls.append({"tensors": tensors, "dims": list(group.dims), "index": index, "scales": scales})
        calls[-1].update(noise_stds=stds, seed=group.seed)
        outputs.append(
            gather_channels_many(tensors, group.dims, index, scales=scales, noise_stds=stds, seed=group.seed)
        )
    calls[0]["groups"], calls[0]["relative"] = groups, relative
    for call, group_change in zip(calls, change.groups.values()):
        new = group_change.new.to(device)
        call["old_width"] = int((~new).sum())
        call["parents"] = call["index"][new]
        # Known from the change's structure, so the hand-written code needs no data-dependent branch.
        call["zero_new"] = [s is not None and not bool(s[new].any()) for s in call["scales"]]
        call["kind"] = kind
    return calls


def torch_change(calls: list[dict[str, Any]]) -> list[torch.Tensor]:
    """What a user writes: pruning is ``index_select`` of the kept units; growth is ``cat`` of the old tensor
    and its new slices (copies of the parents, with noise where asked; zeros where the scale is zero)."""
    outs = []
    for call in calls:
        pairs = zip(call["tensors"], call["dims"], call["scales"], call["noise_stds"], call["zero_new"])
        for t, dim, scale, std, zero_new in pairs:
            if call["kind"] == "prune":
                outs.append(t.index_select(dim, call["index"]))
                continue
            w = call["old_width"]
            shape = [1] * t.dim()
            shape[dim] = -1
            if zero_new:  # consumer columns, momentum: the new slices start at 0
                new_shape = list(t.shape)
                new_shape[dim] = call["parents"].numel()
                outs.append(torch.cat([t, t.new_zeros(new_shape)], dim))
                continue
            new = t.index_select(dim, call["parents"])
            if isinstance(std, torch.Tensor):
                new = new + torch.randn_like(new) * std[w:].view(shape)
            out = torch.cat([t, new], dim)
            outs.append(out * scale.view(shape) if scale is not None else out)
    return outs


def ours_change(calls: list[dict[str, Any]]) -> list[torch.Tensor]:
    outs = []
    for c in calls:
        outs += gather_channels_many(
            c["tensors"], c["dims"], c["index"], scales=c["scales"], noise_stds=c["noise_stds"], seed=c["seed"]
        )
    return outs


def ours_batched(calls: list[dict[str, Any]]) -> list[torch.Tensor | None]:
    """The same change as surgery runs it: one ``gather_channels_groups`` call; None for the outputs a later
    group reads again (never stored)."""
    return [out for outs in gather_channels_groups(calls[0]["groups"]) for out in outs]


def ours_unchecked(calls: list[dict[str, Any]]) -> list[torch.Tensor | None]:
    """The same change as surgery builds it: a ``GatherBatch`` (no argument checks), its noise relative to the
    std of the weights it copies (the device computes that std), built and run."""
    batch, relative = GatherBatch(), calls[0]["relative"]
    for g, group in enumerate(calls[0]["groups"]):
        for k, (t, dim, scale, std) in enumerate(zip(group.tensors, group.dims, group.scales, group.noise_stds)):
            std, c = relative.get((g, k), (std, 0.0))  # surgery's std, then the factor the device computes
            batch.add(t, dim, scale, std, c)
        batch.close(group.index, group.seed)
    return [out for outs in batch.run() for out in outs]


def gather_verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's target for a VGG-19 change's gather, met or not: ≤ 1 ms as surgery calls it, and faster than
    the compiled torch code it replaces."""
    lines = []
    for workload in dict.fromkeys(r["workload"] for r in rows):
        by_impl = {r["impl"]: r for r in rows if r["workload"] == workload}
        ms = by_impl[SURGERY_GATHER]["median_us"] / 1e3
        vs_compiled = by_impl["torch.compile (b)"]["median_us"] / by_impl[SURGERY_GATHER]["median_us"]
        met = ms <= CHANGE_GATHER_MS and vs_compiled > 1
        lines.append(
            f"gather {workload}: {ms:.2f} ms as surgery calls it (target ≤ {CHANGE_GATHER_MS:g} ms), "
            f"{vs_compiled:.1f}× faster than torch.compile (> 1×): {'met' if met else 'NOT met'}"
        )
    return lines


def gather_bytes(calls: list[dict[str, Any]]) -> int:
    total = 0
    for c in calls:
        live = int((c["index"] >= 0).sum())
        for t, dim in zip(c["tensors"], c["dims"]):
            out_bytes = t.numel() // t.shape[dim] * c["index"].numel() * t.element_size()
            total += out_bytes + out_bytes * live // c["index"].numel()
    return total


def bench_gather(workload: Workload, device: torch.device) -> list[dict[str, Any]]:
    rows = []
    compiled = torch.compile(torch_change)
    for kind in ("grow", "prune"):
        calls = capture_change(workload, kind, device)
        ours, theirs, batched = ours_change(calls), torch_change(calls), ours_batched(calls)
        unchecked = ours_unchecked(calls)
        flat_stds = [s for c in calls for s in c["noise_stds"]]
        for i, (a, b, c, d, std) in enumerate(zip(ours, theirs, batched, unchecked, flat_stds, strict=True)):
            noisy = isinstance(std, torch.Tensor) or std > 0
            if a.shape != b.shape or (not noisy and not torch.equal(a, b)):
                raise RuntimeError(f"gather {kind}: output {i} disagrees with index_select + cat; not timing it")
            # The same kernel, the same noise; surgery's std (summed on the device) differs in its last bits.
            same_std = torch.allclose(c, d, rtol=1e-5, atol=1e-6) if noisy and c is not None else torch.equal(c, d)
            if c is not None and not (torch.equal(a, c) and same_std):
                raise RuntimeError(f"gather {kind}: batched output {i} disagrees with the per-group call")
        impls = {
            "triton": partial(ours_change, calls),
            "triton batched": partial(ours_batched, calls),
            SURGERY_GATHER: partial(ours_unchecked, calls),
            "torch (a)": partial(torch_change, calls),
            "torch.compile (b)": partial(compiled, calls),
        }
        label = f"{workload.name} {kind} ({len(calls)} groups)"
        rows += _time_all("gather_channels_many", label, torch.float32, gather_bytes(calls), impls, device)
    return rows


def verdicts(stats_rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets for channel_stats on VGG-19, met or not, from the measured rows."""
    lines = []
    for dtype in ("float32", "bfloat16"):
        by_impl = {r["impl"]: r for r in stats_rows if r["workload"] == "vgg19" and r["dtype"] == dtype}
        if "triton plan" not in by_impl:
            continue
        copy_fraction = by_impl["triton plan"]["pct_of_copy"] / 100
        vs_torch = by_impl["torch (a)"]["ours_speedup"]
        vs_compiled = by_impl["torch.compile (b)"]["ours_speedup"]
        met = (
            copy_fraction >= TARGETS["copy_fraction"]
            and vs_torch >= TARGETS["vs_torch"]
            and vs_compiled >= TARGETS["vs_compiled"]
        )
        lines.append(
            f"channel_stats VGG-19 {dtype}: {copy_fraction:.0%} of copy bandwidth (target ≥ 80 %), "
            f"{vs_torch:.1f}× faster than torch (≥ 10×), {vs_compiled:.1f}× faster than torch.compile (≥ 2×): "
            f"{'targets met' if met else 'targets NOT met'}"
        )
        call = by_impl["triton plan"]["median_us"] / by_impl["triton plan, graph replay"]["median_us"]
        lines.append(
            f"channel_stats VGG-19 {dtype}: the prepared call takes {call:.2f}× its kernel's device time (graph "
            f"replay; target ≤ {CALL_OVER_DEVICE}×): {'met' if call <= CALL_OVER_DEVICE else 'NOT met'}"
        )
    rates = {
        r["dtype"]: r["gb_per_s"]
        for r in stats_rows
        if r["workload"] == "vgg19" and r["impl"] == "triton plan, graph replay"
    }
    if {"float32", "bfloat16"} <= rates.keys():
        per_byte = rates["bfloat16"] / rates["float32"]
        lines.append(
            f"channel_stats VGG-19 kernel: bf16 moves {per_byte:.2f}× the bytes per second of fp32 (target ≥ 1, "
            f"no slower per byte): {'met' if per_byte >= 1 else 'NOT met'}"
        )
    return lines

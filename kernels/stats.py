"""Triton ``channel_stats``: per-channel l1, l2², w·g and |w·g| of a whole sequence of tensors in one launch.

Each channel is one program that loops over the channel's elements in blocks of ``BLOCK_N``, so every weight
and gradient element is read once and each sum is accumulated in float32 in a fixed order: no atomics, the
same call gives bit-identical results on every run. (A channel's bits may depend on ``BLOCK_N``, which follows
the longest channel of the call, so the same tensor in a different company can differ in the last ulp.)

Any rank and any strides, without copies: on the host each tensor becomes (channel dim) × (the other dims,
size-1 dims dropped, sorted by stride and merged where weight and gradient strides allow), described by one
row of an int64 table: data addresses, channel strides, sizes and strides of the merged dims, the out
address and strides. The program id maps to (tensor, channel) through the table's prefix sums of channel
counts. Addresses are cast to typed pointers in the kernel, which works on CUDA and under
``TRITON_INTERPRET=1`` alike. All tensors of one launch share their (weight, grad) dtypes; a call that mixes
dtypes launches once per dtype group. Tables are cached on (address, shape, strides) of every tensor, so a
training loop whose parameters, gradients and ``out`` buffers keep their addresses from step to step builds
no table and copies nothing to the device after the first call.

The launcher is split in two: :func:`prepare_channel_stats` (dtype groups, tables, block sizes: everything that
depends on addresses, shapes and dtypes) and :func:`launch_channel_stats` (the launches alone). The one-shot
call runs both each time; ``ChannelStatsPlan`` runs the first once and the second every step.

Floor: the kernel must read each weight and gradient element once. VGG-19's 16 convolutions hold about 20 M
weights, so in float32 one call moves 2 × 20 M × 4 B ≈ 160 MB, about 55 µs at an H100's ≈ 3 TB/s (half that
in fp16/bf16); the outputs (16 × 4 B per channel) are negligible.

Limits: parallelism is one program per channel (thousands for a CNN; a call with a handful of very long
channels, e.g. the input columns of one tall matrix, leaves most of the GPU idle); a channel may hold at
most 2³¹ − 1 elements; when a merged geometry has more than one dim, each element costs an int32 division
per extra dim to find its offset; loads are coalesced per lane (4 or 2 bytes), not 16-byte vectors, since
the alignment of a channel behind a table address is unknown to the compiler. Not yet timed on a GPU.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses

import torch
import triton
import triton.language as tl

__all__ = ["PreparedChannelStats", "channel_stats_triton", "launch_channel_stats", "prepare_channel_stats"]

MAX_BLOCK_N = 1024  # elements of one channel per loop step; longer channels loop
TABLE_CACHE_SIZE = 64
_FIXED_FIELDS = 8  # w addr, g addr, out addr, w stride_c, g stride_c, out stride_row, out stride_col, numel
_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}
_table_cache: collections.OrderedDict[tuple, tuple[torch.Tensor, int]] = collections.OrderedDict()


@triton.jit
def _channel_l1_l2_wg_kernel(
    new_ptr,  # [num_channels, 4] float32, contiguous: the result when HAS_OUT is False
    table_ptr,  # [num_tensors + 1 + num_tensors * (8 + 3 * RANK)] int64: channel prefix sums, then one row per tensor
    num_tensors,
    momentum,
    W_DTYPE: tl.constexpr,
    G_DTYPE: tl.constexpr,
    HAS_GRAD: tl.constexpr,
    HAS_OUT: tl.constexpr,
    HAS_MOMENTUM: tl.constexpr,
    RANK: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """For channel c of tensor t (program ``prefix[t] + c``), summing in float32 over its elements::

        new = (l1, l2sq, wg, wg_abs) = (Σ|w|, Σw², Σw·g, Σ|w·g|)      (wg = wg_abs = 0 without HAS_GRAD)
        out[c] = momentum · out[c] + (1 − momentum) · new   if HAS_MOMENTUM, else out[c] = new

    Table row of tensor t: w address, g address, out address, w/g channel strides, out row/col strides,
    elements per channel, then (size, w stride, g stride) of each of the RANK other dims, outermost first.
    """
    pid = tl.program_id(0)
    ts = tl.arange(0, BLOCK_T)
    in_table = ts < num_tensors
    starts = tl.load(table_ptr + 1 + ts, mask=in_table, other=0)
    t = tl.sum(((starts <= pid) & in_table).to(tl.int32), axis=0)
    channel = pid - tl.load(table_ptr + t)
    row = table_ptr + num_tensors + 1 + t * (8 + 3 * RANK)
    w_ptr = tl.load(row).to(tl.pointer_type(W_DTYPE)) + channel * tl.load(row + 3)
    g_ptr = tl.load(row + 1).to(tl.pointer_type(G_DTYPE)) + channel * tl.load(row + 4)
    numel = tl.load(row + 7).to(tl.int32)

    l1 = tl.zeros([BLOCK_N], dtype=tl.float32)
    l2sq = tl.zeros([BLOCK_N], dtype=tl.float32)
    wg = tl.zeros([BLOCK_N], dtype=tl.float32)
    wg_abs = tl.zeros([BLOCK_N], dtype=tl.float32)
    lanes = tl.arange(0, BLOCK_N)
    for start in range(0, numel, BLOCK_N):
        index = start + lanes
        mask = index < numel
        w_offset = tl.zeros([BLOCK_N], dtype=tl.int64)
        g_offset = tl.zeros([BLOCK_N], dtype=tl.int64)
        rest = index
        for d in tl.static_range(RANK - 1, -1, -1):  # innermost dim first
            if d > 0:
                size = tl.load(row + 8 + 3 * d).to(tl.int32)
                position = (rest % size).to(tl.int64)
                rest = rest // size
            else:
                position = rest.to(tl.int64)
            w_offset += position * tl.load(row + 9 + 3 * d)
            if HAS_GRAD:
                g_offset += position * tl.load(row + 10 + 3 * d)
        w = tl.load(w_ptr + w_offset, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
        l1 += tl.abs(w)
        l2sq += w * w
        if HAS_GRAD:
            g = tl.load(g_ptr + g_offset, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
            product = w * g
            wg += product
            wg_abs += tl.abs(product)

    cols = tl.arange(0, 4)
    new = tl.where(cols == 0, tl.sum(l1, axis=0), tl.sum(l2sq, axis=0))
    new = tl.where(cols < 2, new, tl.where(cols == 2, tl.sum(wg, axis=0), tl.sum(wg_abs, axis=0)))
    if HAS_OUT:
        out_ptr = tl.load(row + 2).to(tl.pointer_type(tl.float32)) + channel * tl.load(row + 5)
        out_ptr += cols * tl.load(row + 6)
        if HAS_MOMENTUM:
            new = momentum * tl.load(out_ptr) + (1.0 - momentum) * new
        tl.store(out_ptr, new)
    else:
        tl.store(new_ptr + pid * 4 + cols, new)


def num_warps_for(block_n: int) -> int:
    """Warps for a block of ``block_n`` lanes: at most 8 elements per thread, at most 4 warps."""
    return max(1, min(4, block_n // 256))


def _merged_dims(w: torch.Tensor, g: torch.Tensor | None, dim: int) -> list[tuple[int, int, int]]:
    """(size, w stride, g stride) of the non-channel dims, outermost first, merged where both tensors allow."""
    w_strides = w.stride()
    g_strides = g.stride() if g is not None else w_strides
    others = [k for k in range(w.dim()) if k != dim and w.shape[k] != 1]
    others.sort(key=lambda k: (w_strides[k], g_strides[k]), reverse=True)  # sum order is free: merge more
    merged: list[tuple[int, int, int]] = []
    for k in others:
        size, ws, gs = w.shape[k], w_strides[k], g_strides[k]
        if merged and merged[-1][1] == ws * size and merged[-1][2] == gs * size:
            merged[-1] = (merged[-1][0] * size, ws, gs)
        else:
            merged.append((size, ws, gs))
    return merged or [(1, 0, 0)]


def _table(members: list[int], weights, grads, out, dims, device) -> tuple[torch.Tensor, int]:
    """The int64 descriptor table of one dtype group (cached) and its RANK."""
    key = (device,) + tuple(
        (
            weights[i].data_ptr(),
            weights[i].shape,
            weights[i].stride(),
            dims[i],
            None if grads is None else (grads[i].data_ptr(), grads[i].stride()),
            None if out is None else (out[i].data_ptr(), out[i].stride()),
        )
        for i in members
    )
    if key in _table_cache:
        _table_cache.move_to_end(key)
        return _table_cache[key]
    geometries = [_merged_dims(weights[i], None if grads is None else grads[i], dims[i]) for i in members]
    rank = max(len(geometry) for geometry in geometries)
    prefix, rows = [0], []
    for i, geometry in zip(members, geometries):
        w, d = weights[i], dims[i]
        g = grads[i] if grads is not None else None
        o = out[i] if out is not None else None
        numel = w.numel() // w.shape[d]
        if numel >= 2**31:
            raise ValueError(f"weights[{i}]: at most 2**31 - 1 elements per channel, got {numel}")
        prefix.append(prefix[-1] + w.shape[d])
        rows += [w.data_ptr(), 0 if g is None else g.data_ptr(), 0 if o is None else o.data_ptr()]
        rows += [w.stride(d), 0 if g is None else g.stride(d)]
        rows += [0, 0] if o is None else [o.stride(0), o.stride(1)]
        rows.append(numel)
        for size, ws, gs in [(1, 0, 0)] * (rank - len(geometry)) + geometry:
            rows += [size, ws, gs]
    table = torch.tensor(prefix + rows, dtype=torch.int64).to(device)
    _table_cache[key] = (table, rank)
    if len(_table_cache) > TABLE_CACHE_SIZE:
        _table_cache.popitem(last=False)
    return table, rank


@dataclasses.dataclass(frozen=True)
class _Launch:
    """One launch of a prepared call: the tensors of one (weight dtype, grad dtype) group and its fixed arguments."""

    members: tuple[int, ...]  # indices into the call's weights
    counts: tuple[int, ...]  # channels per member
    channels: int  # programs: the channels of all members
    table: torch.Tensor  # the group's descriptor table, on the device
    constexprs: dict  # every constexpr but HAS_MOMENTUM, which follows the momentum of each launch
    num_warps: int


@dataclasses.dataclass(frozen=True)
class PreparedChannelStats:
    """Everything a ``channel_stats`` launch needs that depends only on the tensors' addresses, shapes, strides
    and dtypes: made once by :func:`prepare_channel_stats`, launched any number of times by
    :func:`launch_channel_stats`. It holds ``out`` but not the inputs: keeping the addresses in its tables
    valid is the caller's business (``ChannelStatsPlan`` holds the storage of weights and out, and refuses to run
    once a gradient is freed)."""

    num_weights: int
    out: tuple[torch.Tensor, ...] | None
    device: torch.device
    launches: tuple[_Launch, ...]
    no_new: torch.Tensor | None  # the unused ``new_ptr`` argument of launches that write into out


def prepare_channel_stats(
    weights: list[torch.Tensor],
    grads: list[torch.Tensor] | None,
    out: list[torch.Tensor] | None,
    dims: list[int],
) -> PreparedChannelStats:
    """The host work of a ``channel_stats`` launch (arguments already checked): dtype groups, descriptor tables
    (built and copied to the device on a table-cache miss), block sizes and warps."""
    device = weights[0].device
    groups: dict[tuple, list[int]] = {}
    for i, w in enumerate(weights):
        groups.setdefault((w.dtype, None if grads is None else grads[i].dtype), []).append(i)
    launches = []
    for (w_dtype, g_dtype), members in groups.items():
        table, rank = _table(members, weights, grads, out, dims, device)
        longest = max(weights[i].numel() // weights[i].shape[dims[i]] for i in members)
        block_n = min(triton.next_power_of_2(longest), MAX_BLOCK_N)
        constexprs = dict(
            W_DTYPE=_TL_DTYPES[w_dtype],
            G_DTYPE=_TL_DTYPES[g_dtype or w_dtype],
            HAS_GRAD=grads is not None,
            HAS_OUT=out is not None,
            RANK=rank,
            BLOCK_T=triton.next_power_of_2(len(members)),
            BLOCK_N=block_n,
        )
        counts = tuple(weights[i].shape[dims[i]] for i in members)
        launches.append(_Launch(tuple(members), counts, sum(counts), table, constexprs, num_warps_for(block_n)))
    return PreparedChannelStats(
        num_weights=len(weights),
        out=None if out is None else tuple(out),
        device=device,
        launches=tuple(launches),
        no_new=None if out is None else torch.empty(0, 4, dtype=torch.float32, device=device),
    )


def launch_channel_stats(prepared: PreparedChannelStats, momentum: float | None) -> list[torch.Tensor]:
    """Launch a prepared call (``momentum`` already checked): one launch per dtype group, no host-to-device copy,
    no device sync. Returns the ``out`` tensors, or new ``[C_i, 4]`` results when the call has no ``out``."""
    out = prepared.out
    results: list[torch.Tensor | None] = list(out) if out is not None else [None] * prepared.num_weights
    has_momentum = momentum is not None
    device = prepared.device
    guard = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with guard:
        for launch in prepared.launches:
            if out is None:
                new = torch.empty(launch.channels, 4, dtype=torch.float32, device=device)
            else:
                new = prepared.no_new
            _channel_l1_l2_wg_kernel[(launch.channels,)](
                new,
                launch.table,
                len(launch.members),
                momentum if has_momentum else 0.0,
                HAS_MOMENTUM=has_momentum,
                num_warps=launch.num_warps,
                **launch.constexprs,
            )
            if out is None:
                for i, part in zip(launch.members, new.split(launch.counts)):
                    results[i] = part
    return results


def channel_stats_triton(
    weights: list[torch.Tensor],
    grads: list[torch.Tensor] | None,
    *,
    out: list[torch.Tensor] | None,
    momentum: float | None,
    dims: list[int],
) -> list[torch.Tensor]:
    """Launcher behind :func:`cgap_triton.kernels.channel_stats` (arguments already checked): one launch per
    (weight dtype, grad dtype) group, i.e. one launch for the usual single-dtype call."""
    return launch_channel_stats(prepare_channel_stats(weights, grads, out, dims), momentum)

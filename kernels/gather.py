"""Channel gather in Triton: one launch rebuilds every (tensor, dim) pair of a whole structural change.

Group g (one index map), output k, slice j along ``dims[k]`` (the spec is
:func:`cgap_triton.kernels.reference.gather_channels_groups`)::

    out[g][k][j] = (index_g[j] >= 0 ? input[g][k][index_g[j]] · scales_g[k][j] : 0) + noise_stds_g[k][j] · N(0, 1)

in float32, stored in the dtype of the input. ``gather_channels_many`` is the one-group case.

Work decomposition. The host describes each pair as ``[outer, channel, inner]`` over the source's own strides
(the source is never copied): adjacent non-channel dims merge where their strides allow; the inner side keeps
as many levels as it needs (``INNER_DIMS``, two for a channels_last conv weight along dim 0); an outer side
that still has several levels is enumerated into several *segments*, each a contiguous block of the output.
One int64 descriptor row per segment holds the source and output addresses (cast in the kernel with
``.to(tl.pointer_type(...))``, as in Triton's grouped-GEMM tutorial), sizes, strides, the address and length of
its group's index map, its group's seed, the scale/std addresses (and that of the input's moments, for noise
relative to the input's std) and the first program id of the segment (a prefix sum of its blocks of ``BLOCK``
output elements). Program ``pid`` finds its segment by counting the prefix
sums ``<= pid``, then writes ``BLOCK`` consecutive output elements: stores are contiguous, loads follow the
source strides; the position math costs two int32 divisions per element (one more per extra inner level).
Pairs of different dtypes are launched once per dtype (the dtype is a ``tl.constexpr``); every pair of one dtype
shares one launch, whatever its group, unless there are more than ``MAX_SEGMENTS`` segments, which take several.

Chains. When a later group gathers an earlier group's output again along another dim (a conv weight whose input
columns one group rewrites and whose output rows the next does), one *chained* row does both: the outer counter
goes through the other group's index map too, the first gather's scale is applied and the value rounded to the
dtype as the first output would be stored, then the second's scale and noise; the intermediate is never stored.
Where one row cannot (noise in the first gather, the same dim twice, a size > 1 dim between the two, three
gathers in a row), the intermediate is stored by one launch and read by the next (a *wave*).

Moments. Noise relative to the std of the input it reads (``GatherBatch``'s ``std_of_input``: surgery's noise on
a copied filter, relative to the filter's weight as the earlier groups leave it) needs a reduction before the
gather: the input's Σx and Σx² are summed in float64 by a launch of their own (``MOMENTS`` rows, the row of a
gather with DST the address of the pair and, for an input read as it is, an index map address of 0 for the
identity; for a chained input, the first gather's row), before the gathers of its wave, which compute the
sample std from them. The host never reads it.

Host side. The table is built from metadata only (addresses, shapes, strides: nothing is read from the device),
as one int64 array for all launches; addresses of index maps and vectors given on the CPU are written as markers
and resolved by torch ops once the device buffer exists; table, CPU index maps and CPU vectors then go to the
device in one non-blocking copy. An index the host did not check (given on the device) that lies outside
``[-1, size)`` reads as -1: the kernel never reads out of bounds.

Memory floor. Each output element is written once and each needed source element is read once (an index
that repeats a channel reads it again, from L2), so the floor is bytes(read) + bytes(written). Example, a
VGG-19 group inside the 512-wide block (fp32, SGD momentum) growing from 256 to 384 channels with 128 new
(-1) units: producer conv weight [256, 512, 3, 3] → [384, 512, 3, 3] rows (dim 0), consumer conv weight
[512, 256, 3, 3] → [512, 384, 3, 3] columns (dim 1), their two momentum buffers, BN γ, β, running mean and
variance and the momentum of γ and β (6 vectors of 256 → 384). Read 4 · (4 · 1,179,648 + 6 · 256) =
18,880,512 B; written 4 · (4 · 1,769,472 + 6 · 384) = 28,320,768 B; floor 47.2 MB, about 14 µs at the
3.35 TB/s of an H100 SXM. The index, scales, stds and descriptor add a few kB. A chained row saves the
intermediate's write and read.

Noise. ``tl.randn(seed_g, offset)`` with ``offset`` the element's position in the concatenation of its group's
outputs (``Σ_{k' < k} numel(out[g][k']) + flat position in out[g][k]``), unique within the group, so the noise is
deterministic in (seed, the pairs' shapes and order) and the same as a one-group call's. The torch twin draws
tensor k from a ``torch.Generator`` seeded with ``seed + k``: the two paths agree in distribution, not in value.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import struct

import numpy as np
import torch
import triton
import triton.language as tl

from ._groups import (
    CheckedGroup,
    CheckedGroups,
    Entry,
    HostLayout,
    VectorSlice,
    collect_host_data,
    host_layout,
    send,
)

MIN_BLOCK, MAX_BLOCK = 128, 1024  # output elements per program; the floor keeps compiled variants few
MIN_SEGMENTS_BLOCK = 16  # likewise for the segment search
INT32_MAX = 2**31 - 1  # position math runs in int32 while every position of a launch, padding included, fits
MAX_SEGMENTS = 1024  # descriptor rows searched by one launch; more are split over several launches
_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}

# Descriptor columns (int64). Addresses are raw data pointers; 0 means "none" for scales, std and the outer map.
SRC = 0  # address of the segment's first source element (channel 0)
DST = 1  # address of the segment's first output element
FIRST_BLOCK = 2  # first program id of the segment (prefix sum of blocks)
NUMEL = 3  # output elements of the segment: outer · length · inner
NOISE_OFFSET = 4  # noise offset of the segment's first output element
SEED = 5  # noise seed of the segment's group
INDEX = 6  # address of the int64 index map along the channel dim
LENGTH = 7  # its length: the output's size along the channel dim
SIZE = 8  # the source's size along the channel dim (an index outside [0, size) reads as -1)
SCALE = 9  # address of a float32 [length] scale along the channel dim, or 0
STD = 10  # address of a float32 std, one per slice of the final gather's dim, or 0
STD_VALUE = 11  # float32 bits of the std (1.0 when STD is given); 0 = no noise
STD_MOMENTS = 12  # address of float64 [Σx, Σx², n] of the input, whose std multiplies the std; or 0
OUTER_STRIDE = 13  # source stride of the outer counter
CHANNEL_STRIDE = 14  # source stride of the channel dim
OUTER_INDEX = 15  # chained rows: address of the outer dim's int64 index map; 0 otherwise
OUTER_SIZE = 16  # chained rows: the source's size along the outer dim
OUTER_SCALE = 17  # chained rows: address of a float32 scale along the outer dim, or 0
OUTER_FIRST = 18  # 1: the outer dim's gather comes first, the channel's is final; 0: the reverse
INNER_NUMEL = 19  # product of the inner sizes
INNER = 20  # then (size, source stride) per inner level, innermost first
# Columns that may hold a staged address (a marker at first): a moments row's DST is its accumulator.
ADDRESS_COLUMNS = (DST, INDEX, SCALE, STD, STD_MOMENTS, OUTER_INDEX, OUTER_SCALE)
# The same, for the kernel (a jitted function reads only constexpr globals).
_SRC, _DST, _FIRST_BLOCK, _NUMEL = tl.constexpr(SRC), tl.constexpr(DST), tl.constexpr(FIRST_BLOCK), tl.constexpr(NUMEL)
_NOISE_OFFSET, _SEED, _INDEX = tl.constexpr(NOISE_OFFSET), tl.constexpr(SEED), tl.constexpr(INDEX)
_LENGTH, _SIZE, _SCALE, _STD = tl.constexpr(LENGTH), tl.constexpr(SIZE), tl.constexpr(SCALE), tl.constexpr(STD)
_STD_VALUE, _STD_MOMENTS = tl.constexpr(STD_VALUE), tl.constexpr(STD_MOMENTS)
_OUTER_STRIDE = tl.constexpr(OUTER_STRIDE)
_CHANNEL_STRIDE, _OUTER_INDEX = tl.constexpr(CHANNEL_STRIDE), tl.constexpr(OUTER_INDEX)
_OUTER_SIZE, _OUTER_SCALE = tl.constexpr(OUTER_SIZE), tl.constexpr(OUTER_SCALE)
_OUTER_FIRST, _INNER_NUMEL, _INNER = tl.constexpr(OUTER_FIRST), tl.constexpr(INNER_NUMEL), tl.constexpr(INNER)


@triton.jit
def _round(x, DTYPE: tl.constexpr):
    """float32 -> DTYPE, rounding to nearest even."""
    if DTYPE == tl.bfloat16:
        # By hand (what cvt.rn does on GPU): the interpreter's fp32 -> bf16 cast truncates.
        bits = x.to(tl.uint32, bitcast=True)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        y = tl.where(x == x, rounded, x.to(DTYPE))
    else:
        y = x.to(DTYPE)
    return y


@triton.jit
def _gather_channels_kernel(
    desc_ptr,  # [n_segments, 20 + 2 * INNER_DIMS] int64: outputs, sources, index maps and geometry (columns above)
    n_segments,
    DTYPE: tl.constexpr,
    INNER_DIMS: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_NOISE: tl.constexpr,
    CHAINED: tl.constexpr,
    MOMENTS: tl.constexpr,
    INDEX_DTYPE: tl.constexpr,
    SEGMENTS_BLOCK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """out[o, j, i] = (index[j] >= 0 ? src[o, index[j], i] · scale[j] : 0) + std[j] · randn(seed, noise_offset)

    over BLOCK consecutive output elements of one segment, in float32, stored as DTYPE. A chained segment (two
    gathers of one source, along the outer and the channel dim, as two groups would do one after the other)
    gathers the outer counter through its own map too, applies the first gather's scale, rounds to DTYPE as the
    first output would be stored, then applies the second's scale and noise (std per slice of the second's dim).

    MOMENTS: instead of storing, add the block's Σx and Σx² (x rounded to DTYPE as stored) to the float64 pair at
    DST; an index map address of 0 is the identity. Those sums give the std that a later launch's rows with
    STD_MOMENTS multiply their noise by.
    """
    fields: tl.constexpr = _INNER + 2 * INNER_DIMS
    pid = tl.program_id(0)
    rows = tl.arange(0, SEGMENTS_BLOCK)
    first_blocks = tl.load(desc_ptr + rows * fields + _FIRST_BLOCK, mask=rows < n_segments, other=0)
    segment = tl.sum(((first_blocks <= pid) & (rows < n_segments)).to(tl.int32), axis=0) - 1
    row = desc_ptr + segment * fields

    # Position math in INDEX_DTYPE (int32 unless a segment nears 2**31 elements): 64-bit division is slow.
    flat = ((pid - tl.load(row + _FIRST_BLOCK)) * BLOCK).to(INDEX_DTYPE) + tl.arange(0, BLOCK)
    mask = flat < tl.load(row + _NUMEL)
    inner_numel = tl.load(row + _INNER_NUMEL).to(INDEX_DTYPE)
    length = tl.load(row + _LENGTH).to(INDEX_DTYPE)
    slices = flat // inner_numel  # (outer, j) counter
    inner = flat - slices * inner_numel
    j = slices % length
    o = slices // length
    offset = tl.zeros([BLOCK], dtype=tl.int64)
    for level in tl.static_range(INNER_DIMS):
        stride = tl.load(row + _INNER + 2 * level + 1)
        if level < INNER_DIMS - 1:
            size = tl.load(row + _INNER + 2 * level).to(INDEX_DTYPE)
            offset += (inner % size) * stride
            inner = inner // size
        else:
            offset += inner * stride
    index = tl.load(row + _INDEX)
    if MOMENTS:
        if index == 0:  # the identity: the moments of the source itself
            channel = j.to(tl.int64)
        else:
            channel = tl.load(index.to(tl.pointer_type(tl.int64)) + j, mask=mask, other=-1)
    else:
        channel = tl.load(index.to(tl.pointer_type(tl.int64)) + j, mask=mask, other=-1)
    live = mask & (channel >= 0) & (channel < tl.load(row + _SIZE))
    offset += channel * tl.load(row + _CHANNEL_STRIDE)
    src = tl.load(row + _SRC).to(tl.pointer_type(DTYPE))
    if CHAINED:
        outer = o.to(tl.int64)
        outer_live = mask
        outer_index = tl.load(row + _OUTER_INDEX)
        if outer_index != 0:
            outer = tl.load(outer_index.to(tl.pointer_type(tl.int64)) + o, mask=mask, other=-1)
            outer_live = mask & (outer >= 0) & (outer < tl.load(row + _OUTER_SIZE))
        offset += outer * tl.load(row + _OUTER_STRIDE)
        x = tl.load(src + offset, mask=live & outer_live, other=0.0).to(tl.float32)
        channel_scale = tl.full([BLOCK], 1.0, tl.float32)
        scale_address = tl.load(row + _SCALE)
        if scale_address != 0:
            channel_scale = tl.load(scale_address.to(tl.pointer_type(tl.float32)) + j, mask=live, other=0.0)
        outer_scale = tl.full([BLOCK], 1.0, tl.float32)
        outer_scale_address = tl.load(row + _OUTER_SCALE)
        if outer_scale_address != 0:
            outer_scale = tl.load(outer_scale_address.to(tl.pointer_type(tl.float32)) + o, mask=outer_live, other=0.0)
        outer_first = tl.load(row + _OUTER_FIRST) != 0
        first_live, second_live = tl.where(outer_first, outer_live, live), tl.where(outer_first, live, outer_live)
        first_scale = tl.where(outer_first, outer_scale, channel_scale)
        second_scale = tl.where(outer_first, channel_scale, outer_scale)
        # Each gather as the torch twin does it: a dead slice is exactly +0.0, whatever the scale.
        x = tl.where(first_live, x * first_scale, 0.0)
        if DTYPE != tl.float32:
            x = _round(x, DTYPE).to(tl.float32)  # the first gather's output as stored
        x = tl.where(second_live, x * second_scale, 0.0)
        final = tl.where(outer_first, j, o)  # the second gather's slice: where its std is read
    else:
        offset += o * tl.load(row + _OUTER_STRIDE)
        x = tl.load(src + offset, mask=live, other=0.0).to(tl.float32)
        if HAS_SCALE:
            scale_address = tl.load(row + _SCALE)
            if scale_address != 0:
                x = x * tl.load(scale_address.to(tl.pointer_type(tl.float32)) + j, mask=live, other=0.0)
        final = j
    if MOMENTS:
        if DTYPE != tl.float32:
            x = _round(x, DTYPE).to(tl.float32)  # the value as stored
        sums = tl.load(row + _DST).to(tl.pointer_type(tl.float64))
        tl.atomic_add(sums, tl.sum(x, axis=0).to(tl.float64))
        tl.atomic_add(sums + 1, tl.sum(x * x, axis=0).to(tl.float64))
    else:
        if HAS_NOISE:
            std_value = tl.load(row + _STD_VALUE).to(tl.int32).to(tl.float32, bitcast=True)
            std_address = tl.load(row + _STD)
            if std_value != 0:
                std = tl.zeros([BLOCK], dtype=tl.float32) + std_value
                if std_address != 0:
                    std = std * tl.load(std_address.to(tl.pointer_type(tl.float32)) + final, mask=mask, other=0.0)
                moments = tl.load(row + _STD_MOMENTS)
                if moments != 0:  # times the sample std of the input, from its moments
                    sums = moments.to(tl.pointer_type(tl.float64))
                    total, squares, n = tl.load(sums), tl.load(sums + 1), tl.load(sums + 2)
                    variance = tl.maximum((squares - total * total / n) / (n - 1.0), 0.0)
                    std = std * tl.sqrt(variance).to(tl.float32)
                x = x + tl.randn(tl.load(row + _SEED), tl.load(row + _NOISE_OFFSET) + flat) * std
        dst = tl.load(row + _DST).to(tl.pointer_type(DTYPE))
        tl.store(dst + flat, _round(x, DTYPE), mask=mask)


def _float_bits(value: float) -> int:
    """The float32 bit pattern of ``value`` as a signed int (read back in the kernel with a bitcast)."""
    return struct.unpack("<i", struct.pack("<f", value))[0]


_ONE_BITS = _float_bits(1.0)
_UNCHAINED = (0, 0, 0, 1)  # OUTER_INDEX..OUTER_FIRST: no outer map; the (identity) outer gather counts as first


def _levels(shape, strides, dims) -> list[tuple[int, int]]:
    """The (size, stride) levels of ``dims`` (outermost first), size-1 dims dropped, adjacent levels that address
    like one level merged (a view, no copy)."""
    merged: list[tuple[int, int]] = []
    for d in dims:
        size = shape[d]
        if size != 1:
            stride = strides[d]
            if merged and merged[-1][1] == size * stride:
                merged[-1] = (merged[-1][0] * size, stride)
            else:
                merged.append((size, stride))
    return merged


def _single_rows(src: torch.Tensor, dim: int, dst: int, head: list) -> list[list]:
    """Descriptor rows gathering ``src`` along ``dim`` into a contiguous output at ``dst``; ``head`` holds the
    columns NOISE_OFFSET to STD_MOMENTS (LENGTH among them).

    Adjacent non-channel dims merge where the strides allow; outer levels left beyond the innermost one are
    enumerated, one segment (a contiguous block of the output) per combination of them.
    """
    shape, strides, length = src.shape, src.stride(), head[LENGTH - NOISE_OFFSET]
    if src.is_contiguous():  # the usual case, without the general merge
        inner_numel = math.prod(shape[dim + 1 :])
        numel = math.prod(shape[:dim]) * length * inner_numel
        if not numel:
            return []
        return [
            [src.data_ptr(), dst, 0, numel, *head, shape[dim] * inner_numel, inner_numel, *_UNCHAINED]
            + [inner_numel, inner_numel, 1]
        ]
    outer = _levels(shape, strides, range(dim)) or [(1, 0)]
    inner = _levels(shape, strides, range(dim + 1, len(shape))) or [(1, 0)]
    tail = [outer[-1][1], strides[dim], *_UNCHAINED, 1]  # INNER_NUMEL last, set below
    inner_numel = 1
    for level in reversed(inner):
        inner_numel *= level[0]
        tail += level
    tail[INNER_NUMEL - OUTER_STRIDE] = inner_numel
    numel = outer[-1][0] * length * inner_numel
    if not numel:
        return []
    return _segments(src, outer[:-1], dst, numel, head, tail)


def _segments(src: torch.Tensor, enumerated: list, dst: int, numel: int, head: list, tail: list) -> list[list]:
    """One row per combination of the ``enumerated`` outer levels: a contiguous block of ``numel`` outputs."""
    if not enumerated:  # one segment
        return [[src.data_ptr(), dst, 0, numel, *head, *tail]]
    address, element_size, noise_offset, columns = src.data_ptr(), src.element_size(), head[0], head[1:]
    rows = []
    for block, coords in enumerate(itertools.product(*(range(s) for s, _ in enumerated))):
        src_address = address + sum(c * st for c, (_, st) in zip(coords, enumerated)) * element_size
        offset = block * numel
        rows.append([src_address, dst + offset * element_size, 0, numel, noise_offset + offset, *columns, *tail])
    return rows


def _moment_rows(src: torch.Tensor, dim: int, sums: int, head: list) -> list[list]:
    """Rows summing the moments of ``src`` gathered along ``dim`` into the float64 pair at ``sums`` (every
    segment adds to the same pair); ``head`` holds the columns NOISE_OFFSET to SCALE (an INDEX of 0: the
    identity)."""
    rows = _single_rows(src, dim, sums, head + [0, 0, 0])
    for row in rows[1:]:  # (a later segment's DST would be offset like an output's)
        row[DST] = sums
    return rows


def _chained_rows(src: torch.Tensor, first: tuple, second: tuple, dst: int, head: list) -> list[list]:
    """Descriptor rows of two gathers of ``src`` in a row: ``first`` and ``second`` are (dim, index address,
    length, scale address) each; ``head`` is as for :func:`_single_rows`, with the second gather's noise. The
    larger dim is the channel dim, the smaller the outer counter (every dim between them has size 1); dims
    before the smaller one are enumerated into segments."""
    outer_first = first[0] < second[0]
    outer, channel = (first, second) if outer_first else (second, first)
    (outer_dim, outer_index, outer_length, outer_scale), (channel_dim, index, length, scale) = outer, channel
    shape, strides = src.shape, src.stride()
    if src.is_contiguous():  # the inner dims address as one level
        inner_numel = math.prod(shape[channel_dim + 1 :])
        inner = ((inner_numel, 1),)
    else:
        inner = _levels(shape, strides, range(channel_dim + 1, len(shape))) or [(1, 0)]
        inner_numel = 1
        for size, _ in inner:
            inner_numel *= size
    numel = outer_length * length * inner_numel
    if not numel:
        return []
    head = [*head]
    head[INDEX - NOISE_OFFSET : SCALE - NOISE_OFFSET + 1] = [index, length, shape[channel_dim], scale]
    tail = [strides[outer_dim], strides[channel_dim], outer_index, shape[outer_dim], outer_scale, int(outer_first)]
    tail.append(inner_numel)
    for level in reversed(inner):
        tail += level
    if outer_dim == 0:  # nothing to enumerate: one segment (a conv weight's rows and columns)
        return [[src.data_ptr(), dst, 0, numel, *head, *tail]]
    return _segments(src, _levels(shape, strides, range(outer_dim)), dst, numel, head, tail)


def _chainable(producer: Entry, consumer: Entry) -> bool:
    """Whether one chained row can do both gathers: the first reads a tensor and adds no noise, and the two run
    along different dims with only size-1 dims between them."""
    if producer.source is None or type(producer.std) is not float or producer.std != 0:
        return False
    if abs(producer.dim - consumer.dim) == 1:  # adjacent dims (a conv weight's columns and rows)
        return True
    low, high = sorted((producer.dim, consumer.dim))
    return low != high and all(producer.shape[d] == 1 for d in range(low + 1, high))


def gather_groups_triton(checked: CheckedGroups) -> list[list[torch.Tensor | None]]:
    """Allocate the outputs, build one descriptor table for the whole call, send it with the CPU index maps and
    vectors in one copy, and launch once per dtype (per wave of stored intermediates; see the module docstring).
    Arguments already validated by ``check_gather_groups``."""
    groups, device = checked.groups, checked.device
    keep_alive: list[torch.Tensor] = []
    layout = host_layout(checked)
    staged = layout.vector_offsets

    def address(vector) -> int:
        """A float32 vector's address; for one given on the CPU, a marker of its place in the buffer."""
        if vector is None:
            return 0
        start = 0
        if type(vector) is VectorSlice:
            vector, start = vector.base, 4 * vector.start
        offset = staged.get(id(vector))
        if offset is not None:
            return -1 - offset - start
        keep_alive.append(vector.to(torch.float32).contiguous())
        return keep_alive[-1].data_ptr() + start

    results: list[list[torch.Tensor | None]] = []
    intermediates: dict[tuple[int, int], tuple[torch.Tensor, int]] = {}  # (group, position) -> (output, wave)
    # Rows of each launch by (wave, phase, dtype): phase 0 sums moments that phase 1's gathers read.
    launches: dict[tuple[int, int, torch.dtype], list] = {}
    moment_counts: list[int] = []  # the number of elements of each input whose moments are summed
    index_addresses = []
    for g, group in enumerate(groups):
        offset = layout.index_offsets.get(g)
        if offset is None:
            keep_alive.append(group.index.contiguous())
            index_addresses.append(keep_alive[-1].data_ptr())
        else:
            index_addresses.append(-1 - offset)
    empty, prod = torch.empty, math.prod
    geometries: dict[tuple, tuple] = {}  # (input shape, dim, length) -> channel size, inner numel, output numel, shape
    for g, group in enumerate(groups):
        length, seed, index_address, entries = group.length, group.seed, index_addresses[g], group.entries
        outs, noise_offset = [], 0
        for entry in entries:
            dim, shape, source = entry.dim, entry.shape, entry.source
            geometry = geometries.get((shape, dim, length))  # (a group's vectors share one)
            if geometry is None:
                out_shape = list(shape)
                out_shape[dim] = length
                inner_numel = prod(shape[dim + 1 :])
                out_numel = (prod(shape[:dim]) if dim else 1) * length * inner_numel
                geometry = geometries[shape, dim, length] = (shape[dim], inner_numel, out_numel, out_shape)
            channel, inner_numel, out_numel, out_shape = geometry
            consumer = entry.consumer
            if consumer is not None and _chainable(entry, groups[consumer[0]].entries[consumer[1]]):
                outs.append(None)  # computed by its consumer's chained rows, never stored
                noise_offset += out_numel
                continue
            std, scale, relative = entry.std, entry.scale, entry.std_of_input
            if type(std) is float:
                std_address, std_bits = 0, (_float_bits(std * (relative or 1.0)) if std else 0)
            else:
                std_address, std_bits = address(std), (_float_bits(relative) if relative else _ONE_BITS)
            moments = 0
            if relative and std_bits:  # the input's moments, summed by a launch before this gather's
                moments = -1 - (layout.nbytes + 24 * len(moment_counts))
            if scale is None:
                scale_address = 0
            elif type(scale) is VectorSlice and id(scale.base) in staged:  # the usual case, without a call
                scale_address = -1 - staged[id(scale.base)] - 4 * scale.start
            else:
                scale_address = address(scale)
            out = empty(*out_shape, dtype=entry.dtype, device=device)  # (ints, not a list: parsed faster)
            wave, read = 0, source  # read: the tensor the entry reads as it is, if one does
            if source is not None and out_numel and source.is_contiguous():  # _single_rows' usual case, inline
                rows = [
                    [source.data_ptr(), out.data_ptr(), 0, out_numel, noise_offset, seed, index_address, length]
                    + [channel, scale_address, std_address, std_bits, moments, channel * inner_numel, inner_numel]
                    + [*_UNCHAINED, inner_numel, inner_numel, 1]
                ]
            else:
                head = [noise_offset, seed, index_address, length, channel, scale_address, std_address, std_bits]
                head.append(moments)
                if source is not None:
                    rows = _single_rows(source, dim, out.data_ptr(), head)
                else:
                    pg, pk = entry.consumes
                    stored = intermediates.get((pg, pk))
                    if stored is not None:  # the earlier output, stored by an earlier launch
                        read, wave = stored
                        wave += 1
                        rows = _single_rows(read, dim, out.data_ptr(), head)
                    else:  # both gathers in this output's rows
                        producer = groups[pg].entries[pk]
                        first = (producer.dim, index_addresses[pg], groups[pg].length, address(producer.scale))
                        second = (dim, index_address, length, scale_address)
                        rows = _chained_rows(producer.source, first, second, out.data_ptr(), head)
                        if moments:  # those of the first gather's output, which is never stored
                            first_head = [0, 0, first[1], first[2], producer.shape[producer.dim], first[3]]
                            moment_rows = _moment_rows(producer.source, producer.dim, moments, first_head)
            if rows:
                launch = launches.get((wave, 1, entry.dtype))
                if launch is None:
                    launches[wave, 1, entry.dtype] = launch = []
                launch += rows
            if moments:
                if read is not None:  # the moments of a tensor as it is: an identity map (index address 0)
                    moment_rows = _moment_rows(read, 0, moments, [0, 0, 0, read.shape[0], read.shape[0], 0])
                moment_counts.append(prod(shape))
                launch = launches.get((wave, 0, entry.dtype))
                if launch is None:
                    launches[wave, 0, entry.dtype] = launch = []
                launch += moment_rows
            if consumer is None:
                outs.append(out)
            else:
                outs.append(None)
                intermediates[(g, len(outs) - 1)] = (out, wave)
            noise_offset += out_numel
        results.append(outs)
    _launch_all(checked, layout, launches, moment_counts)
    return results


def _launch_all(checked: CheckedGroups, layout: HostLayout, launches: dict, moment_counts: list[int]) -> None:
    """Number the blocks, pad the rows to one width, stage the table (after the moments' float64 [0, 0, n]
    triples) with the CPU data, and launch in wave order, each wave's moments before its gathers."""
    if not launches:  # every output empty: nothing to launch, nothing to send
        return
    inner_dims = (max(max(map(len, rows)) for rows in launches.values()) - INNER) // 2
    fields = INNER + 2 * inner_dims
    prefix = 3 * len(moment_counts)
    ordered: list[list[int]] = []  # the rows in table order
    chunks = []  # (dtype, moments?, first row, rows)
    for (_, phase, dtype), rows in sorted(launches.items(), key=lambda item: item[0][:2]):
        for start in range(0, len(rows), MAX_SEGMENTS):
            chunk = rows[start : start + MAX_SEGMENTS]
            chunks.append((dtype, phase == 0, len(ordered), len(chunk)))
            ordered += chunk
    n_rows, size = len(ordered), prefix + len(ordered) * fields
    flat: list[int] = [0] * prefix  # the moments' triples [0, 0, n], then the rows
    for row in ordered:
        flat += row
    if len(flat) == size:  # every row as wide as the widest
        staged = np.fromiter(flat, dtype=np.int64, count=size)
        table = staged[prefix:].reshape(n_rows, fields)
    else:  # unit levels (size 1, stride 0) beyond a row's own change no offset
        staged = np.zeros(size, dtype=np.int64)
        table = staged[prefix:].reshape(n_rows, fields)
        table[:, INNER::2] = 1
        lengths = np.fromiter(map(len, ordered), dtype=np.int64, count=n_rows)
        starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
        values = np.fromiter(flat, dtype=np.int64, count=len(flat))[prefix:]
        table[np.repeat(np.arange(n_rows), lengths), np.arange(len(values)) - starts] = values
    if prefix:
        staged[2:prefix:3] = np.array(moment_counts, dtype=np.float64).view(np.int64)
    plan = []
    for dtype, moments, first, n_segments in chunks:
        launch = table[first : first + n_segments]
        numel = launch[:, NUMEL]
        largest = int(numel.max())
        block = max(MIN_BLOCK, min(MAX_BLOCK, _next_power_of_2(largest)))
        blocks = -(-numel // block)
        ends = np.cumsum(blocks)
        launch[:, FIRST_BLOCK] = ends - blocks
        scaled, noisy, chained = launch[:, (SCALE, STD_VALUE, OUTER_INDEX)].any(axis=0).tolist()
        plan.append((n_segments, dtype, moments, block, int(ends[-1]), largest, scaled, noisy, chained))
    staged = torch.from_numpy(staged)
    buffer, offset = send(checked, layout, staged, fix=lambda _, base: _fix_staged_addresses(table, base))
    offset += 8 * prefix
    # Triton launches on the current CUDA device: make it the tensors' one.
    with torch.cuda.device(buffer.device) if buffer.is_cuda else contextlib.nullcontext():
        for n_segments, dtype, moments, block, n_blocks, largest, scaled, noisy, chained in plan:
            end = offset + 8 * fields * n_segments
            _gather_channels_kernel[(n_blocks,)](
                buffer[offset:end].view(torch.int64),
                n_segments,
                DTYPE=_TL_DTYPES[dtype],
                INNER_DIMS=inner_dims,
                HAS_SCALE=scaled,
                HAS_NOISE=noisy,
                CHAINED=chained,
                MOMENTS=moments,
                INDEX_DTYPE=tl.int64 if largest + block > INT32_MAX else tl.int32,
                SEGMENTS_BLOCK=max(MIN_SEGMENTS_BLOCK, _next_power_of_2(n_segments)),
                BLOCK=block,
            )
            offset = end


def _next_power_of_2(n: int) -> int:
    """The smallest power of 2 >= ``n`` (``triton.next_power_of_2`` in one int operation)."""
    return 1 << (n - 1).bit_length() if n > 1 else 1


def _fix_staged_addresses(rows: np.ndarray, base: int) -> None:
    """Turn the markers ``-1 - offset`` of staged data into addresses in the buffer at ``base`` (on the host)."""
    columns = rows[:, ADDRESS_COLUMNS]
    rows[:, ADDRESS_COLUMNS] = np.where(columns < 0, (base - 1) - columns, columns)


def gather_channels_many_triton(tensors, dims, index, *, scales, noise_stds, seed) -> list[torch.Tensor]:
    """One group: the call of ``gather_channels_many`` (arguments already validated by ``check_gather_args``)."""
    entries = [
        Entry(t, None, d, t.shape, t.dtype, scale, std) for t, d, scale, std in zip(tensors, dims, scales, noise_stds)
    ]
    checked = CheckedGroups([CheckedGroup(entries, index, seed)], tensors[0].device)
    collect_host_data(checked)
    return gather_groups_triton(checked)[0]

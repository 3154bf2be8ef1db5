"""Channel gather in Triton: one launch rebuilds every (tensor, dim) pair of a channel group.

Output k, slice j along ``dims[k]`` (the spec is :func:`cgap_triton.kernels.reference.gather_channels_many`)::

    out[k][j] = (index[j] >= 0 ? tensors[k][index[j]] · scales[k][j] : 0) + noise_stds[k][j] · N(0, 1)

in float32, stored in the dtype of ``tensors[k]``.

Work decomposition. The host describes each pair as ``[outer, channel, inner]`` over the source's own strides
(the source is never copied): adjacent non-channel dims merge where their strides allow; the inner side keeps
as many levels as it needs (``INNER_DIMS``, two for a channels_last conv weight along dim 0); an outer side
that still has several levels is enumerated into several *segments*, each a contiguous block of the output.
One int64 descriptor row per segment holds the source and output addresses (cast in the kernel with
``.to(tl.pointer_type(...))``, as in Triton's grouped-GEMM tutorial), sizes, strides, the scale/std
addresses and the first program id of the segment (a prefix sum of its blocks of ``BLOCK`` output elements).
Program ``pid`` finds its segment by counting the prefix sums ``<= pid``, then writes ``BLOCK`` consecutive
output elements: stores are contiguous, loads follow the source strides; the position math costs two int32
divisions per element (one more per extra inner level). Pairs of different dtypes are launched once per dtype
(the dtype is a ``tl.constexpr``); every pair of one dtype shares one launch, unless enumerated outer levels
make more than ``MAX_SEGMENTS`` segments (sources whose outer dims cannot merge), which take several.

Memory floor. Each output element is written once and each needed source element is read once (an index
that repeats a channel reads it again, from L2), so the floor is bytes(read) + bytes(written). Example, a
VGG-19 group inside the 512-wide block (fp32, SGD momentum) growing from 256 to 384 channels with 128 new
(-1) units: producer conv weight [256, 512, 3, 3] → [384, 512, 3, 3] rows (dim 0), consumer conv weight
[512, 256, 3, 3] → [512, 384, 3, 3] columns (dim 1), their two momentum buffers, BN γ, β, running mean and
variance and the momentum of γ and β (6 vectors of 256 → 384). Read 4 · (4 · 1,179,648 + 6 · 256) =
18,880,512 B; written 4 · (4 · 1,769,472 + 6 · 384) = 28,320,768 B; floor 47.2 MB, about 14 µs at the
3.35 TB/s of an H100 SXM. The index, scales, stds and descriptor add a few kB.

Noise. ``tl.randn(seed, offset)`` with ``offset`` the element's position in the concatenation of all outputs
of the call (``Σ_{k' < k} numel(out[k']) + flat position in out[k]``), unique across the batch, so the noise
is deterministic in (seed, the pairs' shapes and order). The torch twin draws tensor k from a
``torch.Generator`` seeded with ``seed + k``: the two paths agree in distribution, not in value.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import struct

import torch
import triton
import triton.language as tl

MIN_BLOCK, MAX_BLOCK = 128, 1024  # output elements per program; the floor keeps compiled variants few
MIN_SEGMENTS_BLOCK = 16  # likewise for the segment search
INT32_MAX = 2**31 - 1  # position math runs in int32 while every position of a launch, padding included, fits
MAX_SEGMENTS = 1024  # descriptor rows searched by one launch; more are split over several launches
_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}

# Descriptor columns (int64). Addresses are raw data pointers; 0 means "none" for scale and std.
_SRC = tl.constexpr(0)  # address of the segment's first source element (channel 0)
_DST = tl.constexpr(1)  # address of the segment's first output element
_FIRST_BLOCK = tl.constexpr(2)  # first program id of the segment (prefix sum of blocks)
_NUMEL = tl.constexpr(3)  # output elements of the segment: outer · len(index) · inner
_NOISE_OFFSET = tl.constexpr(4)  # noise offset of the segment's first output element
_SCALE = tl.constexpr(5)  # address of a float32 [len(index)] scale, or 0
_STD = tl.constexpr(6)  # address of a float32 [len(index)] std, or 0
_STD_VALUE = tl.constexpr(7)  # float32 bits of the std (1.0 when _STD is given); 0 = no noise
_OUTER_STRIDE = tl.constexpr(8)  # source stride of the outer counter
_CHANNEL_STRIDE = tl.constexpr(9)  # source stride of the channel dim
_INNER_NUMEL = tl.constexpr(10)  # product of the inner sizes
_INNER = tl.constexpr(11)  # then (size, source stride) per inner level, innermost first


@triton.jit(do_not_specialize=["seed"])
def _gather_channels_kernel(
    desc_ptr,  # [n_segments, 11 + 2 * INNER_DIMS] int64: outputs, sources and their geometry (columns above)
    index_ptr,  # [length] int64: source channel of output slice j, -1 for a zero slice
    n_segments,
    length,
    seed,
    DTYPE: tl.constexpr,
    INNER_DIMS: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_NOISE: tl.constexpr,
    INDEX_DTYPE: tl.constexpr,
    SEGMENTS_BLOCK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """out[o, j, i] = (index[j] >= 0 ? src[o, index[j], i] · scale[j] : 0) + std[j] · randn(seed, noise_offset)

    over BLOCK consecutive output elements of one segment, in float32, stored as DTYPE.
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
    slices = flat // inner_numel  # (outer, j) counter
    inner = flat - slices * inner_numel
    j = slices % length
    offset = (slices // length) * tl.load(row + _OUTER_STRIDE)
    for level in tl.static_range(INNER_DIMS):
        stride = tl.load(row + _INNER + 2 * level + 1)
        if level < INNER_DIMS - 1:
            size = tl.load(row + _INNER + 2 * level).to(INDEX_DTYPE)
            offset += (inner % size) * stride
            inner = inner // size
        else:
            offset += inner * stride
    channel = tl.load(index_ptr + j, mask=mask, other=-1)
    live = mask & (channel >= 0)
    offset += channel * tl.load(row + _CHANNEL_STRIDE)
    src = tl.load(row + _SRC).to(tl.pointer_type(DTYPE))
    x = tl.load(src + offset, mask=live, other=0.0).to(tl.float32)
    if HAS_SCALE:
        scale_address = tl.load(row + _SCALE)
        if scale_address != 0:
            x = x * tl.load(scale_address.to(tl.pointer_type(tl.float32)) + j, mask=live, other=0.0)
    if HAS_NOISE:
        std_value = tl.load(row + _STD_VALUE).to(tl.int32).to(tl.float32, bitcast=True)
        std_address = tl.load(row + _STD)
        if std_value != 0:
            std = tl.zeros([BLOCK], dtype=tl.float32) + std_value
            if std_address != 0:
                std = std * tl.load(std_address.to(tl.pointer_type(tl.float32)) + j, mask=mask, other=0.0)
            x = x + tl.randn(seed, tl.load(row + _NOISE_OFFSET) + flat) * std
    if DTYPE == tl.bfloat16:
        # Round to nearest even by hand (what cvt.rn does on GPU): the interpreter's fp32 -> bf16 cast truncates.
        bits = x.to(tl.uint32, bitcast=True)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        y = tl.where(x == x, rounded, x.to(DTYPE))
    else:
        y = x.to(DTYPE)
    dst = tl.load(row + _DST).to(tl.pointer_type(DTYPE))
    tl.store(dst + flat, y, mask=mask)


def _merge(levels: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Merge adjacent (size, stride) levels, outermost first, that address like one level (a view, no copy)."""
    merged: list[tuple[int, int]] = []
    for size, stride in levels:
        if merged and merged[-1][1] == size * stride:
            merged[-1] = (merged[-1][0] * size, stride)
        else:
            merged.append((size, stride))
    return merged


def _float_bits(value: float) -> int:
    """The float32 bit pattern of ``value`` as a signed int (read back in the kernel with a bitcast)."""
    return struct.unpack("<i", struct.pack("<f", value))[0]


def _pair_rows(src: torch.Tensor, dim: int, out: torch.Tensor, noise_offset: int, scale_and_std: list[int]):
    """Descriptor rows of one pair (first-block column left at 0) and its number of inner levels.

    Size-1 dims are dropped and adjacent dims merged where the strides allow; outer levels left beyond the
    innermost one are enumerated, one segment (a contiguous block of ``out``) per combination of them.
    """
    shape, strides, length = src.shape, src.stride(), out.shape[dim]
    outer = _merge([(s, st) for s, st in zip(shape[:dim], strides[:dim]) if s != 1]) or [(1, 0)]
    inner = _merge([(s, st) for s, st in zip(shape[dim + 1 :], strides[dim + 1 :]) if s != 1]) or [(1, 0)]
    inner_numel = math.prod(s for s, _ in inner)
    numel = outer[-1][0] * length * inner_numel
    levels = [value for level in reversed(inner) for value in level]
    rows = []
    for block, coords in enumerate(itertools.product(*(range(s) for s, _ in outer[:-1]))):
        src_offset = sum(c * st for c, (_, st) in zip(coords, outer[:-1]))
        src_address = src.data_ptr() + src_offset * src.element_size()
        dst_address = out.data_ptr() + block * numel * out.element_size()
        rows.append([src_address, dst_address, 0, numel, noise_offset + block * numel, *scale_and_std])
        rows[-1] += [outer[-1][1], strides[dim], inner_numel, *levels]
    return (rows if numel else []), len(inner)


def gather_channels_many_triton(tensors, dims, index, *, scales, noise_stds, seed) -> list[torch.Tensor]:
    """Allocate the outputs and launch once per dtype (arguments already validated by ``check_gather_args``)."""
    index = index.contiguous()
    outs, rows_by_dtype, keep_alive, noise_offset = [], {}, [], 0
    for src, dim, scale, std in zip(tensors, dims, scales, noise_stds):
        shape = list(src.shape)
        shape[dim] = index.numel()
        out = torch.empty(shape, dtype=src.dtype, device=src.device)
        scale_and_std = [0, 0, _float_bits(std if isinstance(std, float) else 1.0)]
        for column, vector in enumerate((scale, std)):
            if isinstance(vector, torch.Tensor):  # one float32 factor per index, read at [j]
                keep_alive.append(vector.to(torch.float32).contiguous())
                scale_and_std[column] = keep_alive[-1].data_ptr()
        rows, inner_dims = _pair_rows(src, dim, out, noise_offset, scale_and_std)
        if rows:  # an empty output needs no launch
            rows_by_dtype.setdefault(src.dtype, []).extend((row, inner_dims) for row in rows)
        outs.append(out)
        noise_offset += out.numel()
    for dtype, dtype_rows in rows_by_dtype.items():
        inner_dims = max(dims for _, dims in dtype_rows)
        for start in range(0, len(dtype_rows), MAX_SEGMENTS):
            _launch(dtype, dtype_rows[start : start + MAX_SEGMENTS], inner_dims, index, seed)
    return outs


def _launch(dtype: torch.dtype, rows: list, inner_dims: int, index: torch.Tensor, seed: int) -> None:
    largest = max(row[3] for row, _ in rows)
    block = max(MIN_BLOCK, min(MAX_BLOCK, triton.next_power_of_2(largest)))
    table, n_blocks = [], 0
    for row, dims in rows:
        padding = [1, 0] * (inner_dims - dims)  # unit levels outside the real ones change no offset
        table.append([*row[:2], n_blocks, *row[3:], *padding])
        n_blocks += triton.cdiv(row[3], block)
    # Triton launches on the current CUDA device: make it the tensors' one.
    with torch.cuda.device(index.device) if index.is_cuda else contextlib.nullcontext():
        _gather_channels_kernel[(n_blocks,)](
            torch.tensor(table, dtype=torch.int64).to(index.device),
            index,
            len(rows),
            index.numel(),
            seed,
            DTYPE=_TL_DTYPES[dtype],
            INNER_DIMS=inner_dims,
            HAS_SCALE=any(row[5] != 0 for row, _ in rows),
            HAS_NOISE=any(row[7] != 0 for row, _ in rows),
            INDEX_DTYPE=tl.int64 if largest + block > INT32_MAX else tl.int32,
            SEGMENTS_BLOCK=max(MIN_SEGMENTS_BLOCK, triton.next_power_of_2(len(rows))),
            BLOCK=block,
        )

"""gather_channels / _many / _groups: the Triton kernel (interpreted on CPU) against the torch twin.

Without noise the two must agree bit for bit; with noise, in distribution. Sources and outputs are also
carved from NaN-filled buffers, since the interpreter does not catch out-of-bounds access. One test compiles
every kernel variant for sm_80 and sm_90 and checks spills. The batched form over several index maps
(``gather_channels_groups``) must equal one ``gather_channels_many`` call per group on the same path, bit for
bit, noise included, in one launch per dtype.
"""

from __future__ import annotations

import itertools
import math
import os
import sys

import pytest
import torch
from cgap_triton.kernels import (
    GatherGroup,
    GroupOutput,
    gather_channels,
    gather_channels_groups,
    gather_channels_many,
    reference,
)
from cgap_triton.kernels._groups import GatherBatch, VectorSlice, host_vector

gather = pytest.importorskip("cgap_triton.kernels.gather")
sys.path.insert(0, os.path.dirname(__file__))
from triton_aot import aot_compile_many  # noqa: E402

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def index_map(kind: str, size: int) -> torch.Tensor:
    """Growth (repeats and -1s), pruning (a sorted kept subset) or a shuffle of ``size`` channels."""
    if kind == "grow":
        return torch.cat([torch.arange(size), torch.randint(-1, size, (size // 2 + 2,))])
    if kind == "prune":
        return torch.randperm(size)[: max(1, (2 * size) // 3)].sort().values
    return torch.randperm(size)


def assert_same(actual: torch.Tensor, expected: torch.Tensor, index: torch.Tensor, dim: int) -> None:
    """Bit-for-bit equality, where -1 slices are +0.0 in the kernel's output (the twin may give -0.0)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.is_contiguous()
    dead = (index < 0).view([-1 if d == dim % actual.dim() else 1 for d in range(actual.dim())]).expand_as(actual)
    assert (actual.view(BITS[actual.dtype])[dead] == 0).all(), "a -1 slice is not +0.0"
    expected = torch.where(dead, torch.zeros_like(expected), expected)
    mismatch = (actual.view(BITS[actual.dtype]) != expected.view(BITS[expected.dtype])).nonzero()
    assert len(mismatch) == 0, (
        f"{len(mismatch)} mismatches, first at {mismatch[:5].tolist()}: "
        f"{actual[tuple(mismatch[:5].T)].tolist()} != {expected[tuple(mismatch[:5].T)].tolist()}"
    )


def check_many(tensors, dims, index, **kwargs) -> list[torch.Tensor]:
    outs = gather_channels_many(tensors, dims, index, impl="triton", **kwargs)
    for out, want, dim in zip(outs, reference.gather_channels_many(tensors, dims, index, **kwargs), dims):
        assert_same(out, want, index, dim)
    return outs


@pytest.fixture
def launches(monkeypatch):
    """Grids of the kernel launches made during the test."""
    grids, kernel = [], gather._gather_channels_kernel

    class Counting:
        def __getitem__(self, grid):
            grids.append(grid)
            return kernel[grid]

    monkeypatch.setattr(gather, "_gather_channels_kernel", Counting())
    return grids


SHAPES = [((1,), 0), ((7,), 0), ((13, 1), 0), ((5, 3), 1), ((4, 6, 3, 3), 0), ((4, 6, 3, 3), 1)]
SHAPES += [((2, 5, 3, 7), 3), ((3, 1, 2, 1), 1), ((1, 2, 11, 1), 2)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, dim", SHAPES)
@pytest.mark.parametrize("kind", ["grow", "prune", "shuffle"])
def test_matches_reference(shape, dim, kind, dtype):
    src = torch.randn(shape).to(dtype)
    index = index_map(kind, shape[dim])
    out = gather_channels(src, index, dim, impl="triton")
    assert_same(out, reference.gather_channels(src, index, dim), index, dim)


@pytest.mark.parametrize("dtype", DTYPES)
def test_split_with_scale(dtype):
    """Net2Net split: a channel copied k times, each copy scaled by 1/k (fp32 and fp64 scale vectors)."""
    src = torch.randn(5, 7, 3).to(dtype)
    index = torch.tensor([0, 1, 2, 3, 4, 1, 1, 4, -1])
    counts = torch.bincount(index.clamp(min=0), minlength=5)[index.clamp(min=0)]
    scale = 1.0 / counts.double()
    check_many([src, src.transpose(0, 1)], [0, 1], index, scales=[scale, scale.float()])


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_sources(dtype):
    """Transposed, sliced, permuted, channels_last and broadcast sources are read through their strides."""
    base = torch.randn(8, 10, 3, 5).to(dtype)
    index = torch.tensor([3, -1, 0, 5, 5, 2, -1])
    cases = [
        (base[:, :7, 1], 1),  # sliced, rank 2
        (base[:, 2, 0, 0].view(8, 1).expand(8, 7), 1),  # stride 0
        (base.transpose(0, 1)[:6], 1),  # transposed outer dims
        (base.to(memory_format=torch.channels_last)[:7], 0),  # two inner levels
        (base.to(memory_format=torch.channels_last)[:, :7], 1),
        (base.permute(2, 0, 3, 1)[..., :6], 3),  # last dim, strided
        (base.permute(1, 3, 0, 2), 2),  # outer levels that do not merge: one segment per outer row
        (base[::2, ::3, :, ::2].transpose(1, 3)[:, :, :, :6], 3),
    ]
    for src, dim in cases:
        assert not src.is_contiguous()
        check_many([src], [dim], index.clamp(max=src.shape[dim] - 1))
    # All in one call, each its own group, with a contiguous source: rows of one, two and more levels share
    # one launch (the narrower padded with unit levels), and each output is its call's, bit for bit.
    cases.append((base, 1))
    groups = [GatherGroup([src], [dim], index.clamp(max=src.shape[dim] - 1)) for src, dim in cases]
    together = gather_channels_groups(groups, impl="triton")
    for [out], (src, dim), group in zip(together, cases, groups):
        assert_bits(out, gather_channels_many([src], [dim], group.index, impl="triton")[0])


def test_group_in_one_launch(launches):
    """A channel group's producers, consumers and their optimizer state share one index and one launch."""
    conv, next_conv, linear = torch.randn(6, 3, 3, 3), torch.randn(5, 6, 3, 3), torch.randn(10, 6)
    vectors = [torch.randn(6) for _ in range(4)]  # BN gamma, beta, running mean, running var
    momentum = [torch.randn_like(t) for t in (conv, next_conv, linear)]
    tensors = [conv, *vectors, next_conv, linear, *momentum]
    dims = [0, 0, 0, 0, 0, 1, 1, 0, 1, 1]
    index = torch.tensor([0, 1, 2, 3, 4, 5, 2, -1, 5])
    scales = [torch.rand(9) if i % 3 == 0 else None for i in range(len(tensors))]
    outs = check_many(tensors, dims, index, scales=scales)
    assert len(launches) == 1
    assert [o.shape[d] for o, d in zip(outs, dims)] == [9] * len(tensors)
    check_many([conv, conv.to(torch.bfloat16), linear.half()], [0, 0, 1], index)  # one launch per dtype
    assert len(launches) == 4


def test_many_segments_and_wide_positions(launches, monkeypatch):
    """More segments than one launch searches go to several launches; int64 position math gives the same."""
    src = torch.randn(5, 4, 6, 3).permute(1, 3, 0, 2)  # [4, 3, 5, 6], dim 2: 4 segments, one per outer row
    index = torch.tensor([4, -1, 0, 0, 2])
    monkeypatch.setattr(gather, "MAX_SEGMENTS", 5)
    check_many([src, src[:2]], [2, 2], index, scales=[torch.rand(5), None])
    assert len(launches) == 2  # 4 + 2 segments
    monkeypatch.setattr(gather, "INT32_MAX", 0)
    check_many([src, torch.randn(5)], [2, 0], index, scales=[torch.rand(5), None], noise_stds=[0.0, 0.0])
    assert len(launches) == 3


def test_empty_index_and_empty_tensors(launches):
    outs = check_many([torch.randn(4, 3), torch.randn(0, 4)], [0, 1], torch.zeros(0, dtype=torch.int64))
    assert [tuple(o.shape) for o in outs] == [(0, 3), (0, 0)]
    check_many([torch.randn(4, 0)], [0], torch.tensor([1, -1]))
    assert launches == []


def test_noise_statistics():
    """Per-slice std (0 included), a float std, -1 slices (pure noise): N(0, std²) within 5 sigma."""
    src = torch.randn(6, 2048)
    index = torch.tensor([0, -1, 3, -1, 5, 2])
    stds = torch.tensor([0.0, 0.5, 2.0, 1.0, 0.1, 3.0])
    noisy, plain, pure = gather_channels_many(
        [src, src.t(), torch.zeros(6, 4096)], [0, 1, 0], index, noise_stds=[stds, 0.0, 0.25], seed=7, impl="triton"
    )
    noise = noisy - torch.where((index >= 0)[:, None], src[index.clamp(min=0)], 0.0)
    n = noise.shape[1]
    assert torch.equal(noise[0], torch.zeros(n))  # std 0: the source slice, exactly
    for row, std in zip(noise[1:], stds[1:]):
        assert abs(row.mean()) < 5 * std / math.sqrt(n), (row.mean(), std)
        assert abs(row.std() / std - 1) < 5 / math.sqrt(2 * n), (row.std(), std)
    assert_same(plain, reference.gather_channels(src.t(), index, 1), index, 1)  # no noise asked, none added
    assert abs(pure.mean()) < 5 * 0.25 / math.sqrt(pure.numel())
    assert abs(pure.std() / 0.25 - 1) < 5 / math.sqrt(2 * pure.numel())


def test_noise_reproducible():
    src, index = torch.randn(5, 40).half(), torch.tensor([0, -1, 3, 3])
    kwargs = dict(noise_stds=[0.5, 0.5], impl="triton")
    first = gather_channels_many([src, src], [0, 0], index, seed=3, **kwargs)
    again = gather_channels_many([src, src], [0, 0], index, seed=3, **kwargs)
    other = gather_channels_many([src, src], [0, 0], index, seed=4, **kwargs)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    assert not torch.equal(first[0], first[1])  # unique noise offsets across the batch


def carve(shape, dtype, step=1, pad=1500) -> tuple[torch.Tensor, torch.Tensor]:
    """A tensor of ``shape`` inside a NaN-filled buffer (every ``step``-th element, ``pad`` around); and the buffer."""
    numel = math.prod(shape)
    buffer = torch.full((numel * step + 2 * pad,), float("nan"), dtype=dtype)
    strides = [math.prod(shape[i + 1 :]) * step for i in range(len(shape))]
    return buffer.as_strided(shape, strides, pad), buffer


@pytest.mark.parametrize("dtype", DTYPES)
def test_guard_buffers(dtype, monkeypatch):
    """Sources and outputs inside NaN-filled buffers: every output element written, nothing outside touched."""
    conv, conv_buffer = carve((5, 3, 3, 3), dtype)
    linear, linear_buffer = carve((7, 5), dtype, step=2)
    conv.copy_(torch.randn(5, 3, 3, 3))
    linear.copy_(torch.randn(7, 5))
    before = [conv_buffer.clone(), linear_buffer.clone()]
    carved = []

    class GuardedTorch:  # the launcher's torch, with outputs carved from guarded buffers
        def __getattr__(self, name):
            return getattr(torch, name)

        def empty(self, *shape, dtype, device):
            carved.append(carve(shape, dtype))
            return carved[-1][0]

    monkeypatch.setattr(gather, "torch", GuardedTorch())
    index = torch.tensor([4, -1, 0, 2, 2])
    outs = check_many([conv, linear, conv.transpose(0, 1)], [0, 1, 1], index, scales=[None, torch.rand(5), None])
    for out, (expected_out, buffer) in zip(outs, carved, strict=True):
        assert out is expected_out and not out.isnan().any()
        assert buffer[:1500].isnan().all() and buffer[1500 + out.numel() :].isnan().all()
    for old, new in zip(before, (conv_buffer, linear_buffer)):
        assert torch.equal(old.view(BITS[dtype]), new.view(BITS[dtype]))  # sources untouched


def test_outputs_are_fresh():
    src = torch.randn(4, 6)
    outs = gather_channels_many([src, src.t()], [0, 1], torch.tensor([1, 0, 3]), impl="triton")
    storages = {o.untyped_storage().data_ptr() for o in outs}
    assert len(storages) == 2 and src.untyped_storage().data_ptr() not in storages
    for out in outs:
        assert out.is_contiguous() and out.untyped_storage().nbytes() == out.numel() * out.element_size()


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(index=torch.tensor([0, 1], dtype=torch.int32)), "index"),
        (dict(index=torch.tensor([[0, 1]])), "index"),
        (dict(index=torch.tensor([0, -2])), "index"),
        (dict(index=torch.tensor([0, 4])), "index"),
        (dict(tensors=[torch.randn(4, 3), torch.randn(5, 3)]), "tensors"),
        (dict(scales=[torch.ones(3), None]), r"scales\[0\]"),
        (dict(noise_stds=[-0.1, 0.0]), r"noise_stds\[0\]"),
        (dict(noise_stds=[0.0, torch.tensor([0.1, -0.1])]), r"noise_stds\[1\]"),
    ],
)
def test_bad_input(change, match, launches):
    kwargs = dict(tensors=[torch.randn(4, 3), torch.randn(2, 4)], dims=[0, 1], index=torch.tensor([0, 3]))
    kwargs.update(change)
    with pytest.raises(ValueError, match=match):
        gather_channels_many(**kwargs, impl="triton")
    assert launches == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grow_then_prune_sequence(dtype):
    """A group grown (with a split), pruned and grown again through the kernel equals the twin bit for bit.

    Each step is checked on the same inputs (assert_same); the two chains, run independently, end equal
    (the twin's new units may be -0.0 where the kernel writes +0.0, hence torch.equal for the chains).
    """
    group = [torch.randn(4, 3, 3, 3), torch.randn(4), torch.randn(4), torch.randn(6, 4, 3, 3), torch.randn(10, 4)]
    group = [t.to(dtype) for t in group]
    dims = [0, 0, 0, 1, 1]
    kernel, twin = group, group
    steps = [torch.tensor([0, 1, 2, 3, -1, 1, -1]), torch.tensor([0, 2, 3, 5, 6]), torch.tensor([4, 0, -1, 1, 2, 3])]
    for step, index in enumerate(steps):
        scales = [torch.where(index == 1, 0.5, 1.0) if step == 0 and d == 1 else None for d in dims]
        expected = reference.gather_channels_many(kernel, dims, index, scales=scales)
        kernel = gather_channels_many(kernel, dims, index, scales=scales, impl="triton")
        twin = reference.gather_channels_many(twin, dims, index, scales=scales)
        for k, e, d in zip(kernel, expected, dims):
            assert_same(k, e, index, d)
    assert all(torch.equal(k, t) for k, t in zip(kernel, twin))
    assert [t.shape[d] for t, d in zip(kernel, dims)] == [6] * 5


PTXAS = os.path.join(os.path.dirname(gather.triton.__file__), "backends", "nvidia", "bin", "ptxas")
SIGNATURE = {"desc_ptr": "*i64", "n_segments": "i32"}
SIGNATURE |= dict.fromkeys(["DTYPE", "INNER_DIMS", "HAS_SCALE", "HAS_NOISE", "CHAINED", "MOMENTS"], "constexpr")
SIGNATURE |= dict.fromkeys(["INDEX_DTYPE"], "constexpr")
SIGNATURE |= dict.fromkeys(["SEGMENTS_BLOCK", "BLOCK"], "constexpr")


@pytest.mark.skipif(not os.path.exists(PTXAS), reason="the triton wheel ships no ptxas")
def test_compiles_without_spills():
    """Every variant (dtype × scale × noise, plus two inner levels and int64 positions with both on, plus chained
    segments with noise, plus the moments sums) for sm_80 and sm_90, at the largest block and the segment search
    of a VGG-19 change (256 rows; the largest search, 1024 rows, with everything on): no spills. Registers are
    printed (pytest -s)."""
    variants = []
    for arch, dtype in itertools.product((80, 90), ("float32", "float16", "bfloat16")):
        options = [(scale, noise, False, 1, "int32", 256) for scale in (False, True) for noise in (False, True)]
        options += [(True, True, False, 2, "int32", 256), (True, True, False, 2, "int64", 256)]
        options += [(False, True, True, 1, "int32", 256), (True, True, True, 2, "int64", 256)]
        options += [(True, True, True, 2, "int64", gather.MAX_SEGMENTS)]
        options = [(*option, False) for option in options]
        options += [(scale, False, False, 2, "int32", 256, True) for scale in (False, True)]
        for scale, noise, chained, inner_dims, index_dtype, segments, moments in options:
            constexprs = {"DTYPE": {"dtype": dtype}, "INNER_DIMS": inner_dims, "HAS_SCALE": scale, "HAS_NOISE": noise}
            constexprs |= {"CHAINED": chained, "MOMENTS": moments, "INDEX_DTYPE": {"dtype": index_dtype}}
            constexprs |= {"SEGMENTS_BLOCK": segments, "BLOCK": gather.MAX_BLOCK}
            variants.append({"signature": SIGNATURE, "constexprs": constexprs, "arch": arch})
    reports = aot_compile_many(gather._gather_channels_kernel, variants)
    for variant, report in zip(variants, reports, strict=True):
        c = variant["constexprs"]
        print(
            f"sm_{report.arch} {c['DTYPE']['dtype']:8} scale={c['HAS_SCALE']:d} noise={c['HAS_NOISE']:d} "
            f"chained={c['CHAINED']:d} moments={c['MOMENTS']:d} inner_dims={c['INNER_DIMS']} "
            f"{c['INDEX_DTYPE']['dtype']} "
            f"segments={c['SEGMENTS_BLOCK']}: "
            f"{report.registers} registers, {report.spills} spill bytes"
        )
    assert all(report.spills == 0 for report in reports), [r.ptxas_log for r in reports if r.spills]


@pytest.mark.parametrize("fn", [gather_channels, reference.gather_channels], ids=["public", "reference"])
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"src": torch.zeros(3, dtype=torch.int32)}, r"^src: expected dtype float32"),
        ({"dim": 2}, r"^dim: expected a dim in \[-1, 1\)"),
        ({"scale": torch.ones(2)}, r"^scale: expected shape \(1,\)"),
        ({"noise_std": -1.0}, r"^noise_std: expected a float >= 0"),
    ],
)
def test_single_form_errors_name_its_own_arguments(fn, kwargs, match):
    args = {"src": torch.zeros(3), "index": torch.tensor([0]), "dim": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        fn(**args)


IMPLS = ["auto", "triton", "torch"]
NAN, INF = float("nan"), float("inf")
# Inputs accepted (and spread into the output) or failing with another error than ValueError before the checks.
SINGLE_FORM_BAD = {
    "nan std tensor": (
        {"noise_std": torch.tensor([0.5, NAN])},
        r"^noise_std: expected standard deviations >= 0 and finite",
    ),
    "inf std tensor": (
        {"noise_std": torch.tensor([INF, 0.5])},
        r"^noise_std: expected standard deviations >= 0 and finite",
    ),
    "inf std float": ({"noise_std": INF}, r"^noise_std: expected a float >= 0 and finite, got inf"),
    "meta src": (
        {"src": torch.zeros(3, 4, device="meta"), "index": torch.tensor([2, -1], device="meta")},
        r"^src: .*meta",
    ),
    "meta index": ({"index": torch.tensor([2, -1], device="meta")}, r"^index: expected a tensor with data .*meta"),
    "meta scale": ({"scale": torch.ones(2, device="meta")}, r"^scale: expected a tensor with data .*meta"),
    "meta std": ({"noise_std": torch.ones(2, device="meta")}, r"^noise_std: expected a tensor with data .*meta"),
    "sparse src": ({"src": torch.ones(3, 4).to_sparse()}, r"^src: expected a dense"),
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", SINGLE_FORM_BAD)
def test_single_form_refuses_non_finite_stds_and_tensors_without_data(case, impl, launches):
    change, match = SINGLE_FORM_BAD[case]
    args = {"src": torch.randn(3, 4), "index": torch.tensor([2, -1]), "dim": 0, **change}
    with pytest.raises(ValueError, match=match):
        gather_channels(**args, impl=impl)
    assert launches == []


MANY_FORM_BAD = {
    "nan std tensor": (
        {"noise_stds": [0.0, torch.tensor([0.1, NAN])]},
        r"^noise_stds\[1\]: .*>= 0 and finite, found nan",
    ),
    "inf std tensor": (
        {"noise_stds": [torch.tensor([INF, 0.1]), 0.0]},
        r"^noise_stds\[0\]: .*>= 0 and finite, found inf",
    ),
    "nan std float": ({"noise_stds": [0.0, NAN]}, r"^noise_stds\[1\]: expected a float >= 0 and finite, got nan"),
    "inf std float": ({"noise_stds": [INF, 0.0]}, r"^noise_stds\[0\]: expected a float >= 0 and finite"),
    "meta tensor": ({"tensors": [torch.randn(4, 3), torch.zeros(2, 4, device="meta")]}, r"^tensors\[1\]: .*meta"),
    "meta scale": ({"scales": [None, torch.ones(2, device="meta")]}, r"^scales\[1\]: expected a tensor with data"),
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", MANY_FORM_BAD)
def test_many_form_refuses_non_finite_stds_and_tensors_without_data(case, impl, launches):
    change, match = MANY_FORM_BAD[case]
    kwargs = dict(tensors=[torch.randn(4, 3), torch.randn(2, 4)], dims=[0, 1], index=torch.tensor([0, 3])) | change
    with pytest.raises(ValueError, match=match):
        gather_channels_many(**kwargs, impl=impl)
    assert launches == []


# ------------------------------------------------------------------ gather_channels_groups: many index maps


def assert_bits(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Bit for bit (two outputs of the same implementation: -1 slices and noise included)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.is_contiguous()
    mismatch = (actual.view(BITS[actual.dtype]) != expected.view(BITS[expected.dtype])).nonzero()
    assert len(mismatch) == 0, f"{len(mismatch)} mismatches, first at {mismatch[:5].tolist()}"


def per_group(groups, impl) -> list[list[torch.Tensor | None]]:
    """What the batched call must equal: one gather_channels_many call per group, in order, a GroupOutput read
    from the earlier group's result (and then None there)."""
    results = []
    for tensors, dims, index, scales, stds, seed in groups:
        inputs = []
        for t in tensors:
            if isinstance(t, GroupOutput):
                inputs.append(results[t.group][t.position])
                results[t.group][t.position] = None
            else:
                inputs.append(t)
        results.append(gather_channels_many(inputs, dims, index, scales=scales, noise_stds=stds, seed=seed, impl=impl))
    return results


def assert_groups(actual, expected) -> None:
    assert len(actual) == len(expected)
    for g, (outs, wants) in enumerate(zip(actual, expected)):
        assert len(outs) == len(wants), g
        for out, want in zip(outs, wants):
            assert (out is None) == (want is None), g
            if want is not None:
                assert_bits(out, want)


def three_groups() -> list[GatherGroup]:
    """A growth map (repeats, -1s), a pruning map and a map onto one channel; every dtype, odd and non-contiguous
    shapes, float64/float32 scales, float and per-slice stds (0 included), seeds of their own."""
    grow = torch.tensor([0, 1, 2, 3, 4, 2, -1, 4])
    prune = torch.tensor([0, 2, 5])
    one = torch.tensor([0, -1, 0])
    stds = torch.tensor([0.0, 0.5, 1.0, 0.0, 2.0, 0.1, 0.3, 0.0])
    g0 = GatherGroup(
        [torch.randn(5, 3, 2), torch.randn(4, 5).bfloat16(), torch.randn(5).half(), torch.randn(7, 5).t()],
        [0, 1, 0, 0],
        grow,
        [torch.rand(8, dtype=torch.float64), None, torch.rand(8), None],
        [stds, 0.0, 0.25, 0.0],
        3,
    )
    g1 = GatherGroup(
        [torch.randn(3, 6, 2, 2), torch.randn(6), torch.randn(6, 1, 5).bfloat16()],
        [1, 0, -3],
        prune,
        None,
        [0.0, 0.2, 0.0],
        11,
    )
    g2 = GatherGroup([torch.randn(2, 1, 3).half(), torch.randn(1, 4)], [1, 0], one, [None, torch.rand(3)], None, 5)
    return [g0, g1, g2]


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_groups_equal_one_call_per_group(impl, launches):
    """Each group's outputs are those of its own gather_channels_many call, bit for bit, noise included (the torch
    path draws what the twin draws per group, the Triton path what the kernel draws per group)."""
    groups = three_groups()
    actual = gather_channels_groups(groups, impl=impl)
    calls = len(launches)
    assert_groups(actual, per_group(groups, impl))
    if impl == "triton":
        assert calls == 3  # float32, bfloat16, float16: one launch each for all three maps
        assert len(launches) == calls + 3 + 2 + 2  # per group: one launch per dtype it holds
    assert gather_channels_groups([], impl=impl) == []


def test_groups_take_tuples_and_auto_is_the_twin_on_cpu_and_the_kernel_on_cuda():
    groups = [tuple(g) for g in three_groups()]
    auto = "triton" if groups[0][0][0].is_cuda else "torch"
    assert_groups(gather_channels_groups(groups), per_group(groups, auto))
    assert_groups(reference.gather_channels_groups(groups), per_group(groups, "torch"))


def conv_chain(dtype, rows_first: bool):
    """Two groups sharing a [6, 5, 3, 3] conv weight and its momentum: one rewrites the input columns (dim 1),
    the other the output rows (dim 0), in either order, each with a scale; noise on the second gather only."""
    weight, momentum = torch.randn(6, 5, 3, 3).to(dtype), torch.randn(6, 5, 3, 3).to(dtype)
    columns = (1, torch.tensor([0, 4, 1, -1, 3, 3]), torch.rand(6) + 0.5, 5)  # dim, index, scale, source size
    rows = (0, torch.tensor([5, 0, -1, 2, 2, 1, 4]), torch.rand(7) + 0.5, 6)
    (dim0, index0, scale0, size0), (dim1, index1, scale1, size1) = (rows, columns) if rows_first else (columns, rows)
    first = GatherGroup([torch.randn(size0).to(dtype), weight, momentum], [0, dim0, dim0], index0, [None, scale0, None])
    second = GatherGroup(
        [GroupOutput(0, 1), GroupOutput(0, 2), torch.randn(size1)],
        [dim1, dim1, 0],
        index1,
        [scale1, None, torch.rand(index1.numel())],
        [torch.rand(index1.numel()), 0.0, 0.1],
        seed=9,
    )
    return [first, second]


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("rows_first", [False, True], ids=["columns-then-rows", "rows-then-columns"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_chained_groups_equal_calls_in_sequence(dtype, rows_first, impl, launches):
    """A tensor two groups rewrite (GroupOutput) equals the second call on the first call's output, bit for bit
    (the first output rounded to its dtype in between, as stored); it is computed in the same single launch."""
    groups = conv_chain(dtype, rows_first)
    actual = gather_channels_groups(groups, impl=impl)
    calls = len(launches)
    assert actual[0][1] is None and actual[0][2] is None  # consumed
    assert_groups(actual, per_group(groups, impl))
    if impl == "triton":
        assert calls == (1 if dtype == torch.float32 else 2)  # the float32 vector of group 1 aside


def as_batch(groups, relative=None) -> GatherBatch:
    """``groups`` built into a GatherBatch entry by entry (dims made non-negative, as its callers give them);
    ``relative[(g, k)]`` that entry's ``std_of_input``."""
    batch = GatherBatch()
    for g, (tensors, dims, index, scales, stds, seed) in enumerate(groups):
        for k, (t, dim) in enumerate(zip(tensors, dims)):
            rank = len(t.shape) if isinstance(t, torch.Tensor) else batch.output_shape(*t).__len__()
            scale = None if scales is None else scales[k]
            std = 0.0 if stds is None else stds[k]
            assert batch.add(t, dim % rank, scale, std, (relative or {}).get((g, k), 0.0)) == k
        assert batch.close(index, seed) == g
    return batch


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("case", ["three groups", "a chain"])
def test_a_gather_batch_is_the_checked_call(case, impl, launches):
    """Built entry by entry without checks, a GatherBatch gives what gather_channels_groups gives for the same
    groups, bit for bit, noise included, in as many launches."""
    groups = three_groups() if case == "three groups" else conv_chain(torch.bfloat16, rows_first=False)
    expected = gather_channels_groups(groups, impl=impl)
    calls = len(launches)
    assert_groups(as_batch(groups).run(impl), expected)
    assert len(launches) == 2 * calls


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["chained", "stored", "channels_last"])
def test_noise_relative_to_the_std_of_the_input(case, dtype, impl, launches):
    """std_of_input c: the noise std is std · c · std(input), the input's std taken as it is read (an earlier
    group's output as that group writes it: chained, never stored; stored, since the first gather adds noise; or
    read from a channels_last weight) and, for a plain tensor, of that tensor. It is the noise of the same batch
    given std · float32(c · std(input)) as its std: bit for bit on the torch path, to the rounding of the std
    (summed on the device) on the Triton path, where the moments take launches of their own."""
    first, second = conv_chain(dtype, rows_first=False)
    if case == "stored":
        first = first._replace(noise_stds=[0.0, 0.05, 0.0])
    if case == "channels_last":
        bias, weight, momentum = first.tensors
        first = first._replace(tensors=[bias, weight.to(memory_format=torch.channels_last), momentum])
    c = 0.37
    alone = gather_channels_groups([first], impl=impl)[0]  # group 0's outputs, none consumed
    factors = [(t.float().std().double() * c).float() for t in (alone[1], second.tensors[2])]
    vector, _, value = second.noise_stds
    plain = second._replace(noise_stds=[vector * factors[0], 0.0, torch.full_like(vector, value) * factors[1]])
    before = len(launches)
    expected = gather_channels_groups([first, plain], impl=impl)
    calls = len(launches) - before
    actual = as_batch([first, second], relative={(1, 0): c, (1, 2): c}).run(impl)
    if impl == "torch":
        assert_groups(actual, expected)
    else:
        # moments: one launch per (wave, dtype), before that wave's gathers
        assert len(launches) - before - calls == calls + (2 if case == "stored" else len({dtype, torch.float32}))
        for outs, wants in zip(actual, expected):
            for out, want in zip(outs, wants):
                assert (out is None) == (want is None)
                if want is not None:
                    torch.testing.assert_close(out, want)
    assert not torch.equal(actual[1][0], gather_channels_groups([first, second], impl=impl)[1][0])  # it has noise


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_vector_slices_are_their_views(impl):
    """Scales and stds given as VectorSlices of one CPU base (as surgery gives them) are the views they name:
    the batch gives the same outputs as with those views as tensors, bit for bit."""
    groups = three_groups()
    base, starts = torch.rand(40), iter(range(0, 40, 8))
    sliced = []
    for tensors, dims, index, scales, stds, seed in groups:
        n = index.numel()

        def as_slice(v, n=n):
            if not isinstance(v, torch.Tensor):
                return v
            start = next(starts)
            base[start : start + n] = v.float()
            return VectorSlice(base, start, n)

        scales = None if scales is None else [None if v is None else as_slice(v) for v in scales]
        stds = None if stds is None else [as_slice(v) for v in stds]
        sliced.append(GatherGroup(tensors, dims, index, scales, stds, seed))
    views = [
        g._replace(
            scales=None if g.scales is None else [None if v is None else host_vector(v) for v in g.scales],
            noise_stds=None if g.noise_stds is None else [host_vector(v) for v in g.noise_stds],
        )
        for g in sliced
    ]
    assert any(isinstance(v, VectorSlice) for g in sliced for v in (g.scales or []) + list(g.noise_stds or []))
    assert_groups(as_batch(sliced).run(impl), as_batch(views).run(impl))


def test_a_gather_batch_runs_once_and_closed(launches):
    batch = GatherBatch()
    assert batch.run("torch") == [] and batch.run("triton") == []  # nothing to gather, no launch
    with pytest.raises(ValueError, match="impl: expected one of"):
        batch.run("cuda")
    batch.add(torch.randn(4, 3), 1)
    with pytest.raises(ValueError, match="not closed"):
        batch.run("triton")
    batch.close(torch.tensor([2, -1, 0]))
    [[out]] = batch.run("triton")
    assert out.shape == (4, 3) and len(launches) == 1
    with pytest.raises(ValueError, match="has run already"):
        batch.run("triton")


@pytest.mark.parametrize("case", ["noise on the first", "same dim twice", "dims apart", "three in a row"])
def test_chains_one_launch_cannot_do_take_one_more(case, launches):
    """Chains a chained row cannot express: the earlier output is stored by one launch and read by the next."""
    w = torch.randn(6, 4, 5)
    first_std, second_dim, index1 = 0.0, 1, torch.tensor([3, -1, 0, 2, 2])
    if case == "noise on the first":
        first_std = 0.3
    elif case == "same dim twice":
        second_dim, index1 = 0, torch.tensor([4, 0, -1, 1])
    elif case == "dims apart":
        second_dim, index1 = 2, torch.tensor([4, 0, -1, 1, 3, 3])
    groups = [GatherGroup([w], [0], torch.tensor([5, 0, -1, 2, 2]), [torch.rand(5)], [first_std], 1)]
    groups.append(GatherGroup([GroupOutput(0, 0)], [second_dim], index1, [torch.rand(index1.numel())], [0.2], 2))
    if case == "three in a row":
        groups.append(GatherGroup([GroupOutput(1, 0)], [2], torch.tensor([1, 0, 4]), None, None, 3))
    actual = gather_channels_groups(groups, impl="triton")
    assert len(launches) == 2
    assert_groups(actual, per_group(groups, "triton"))
    assert_groups(gather_channels_groups(groups, impl="torch"), per_group(groups, "torch"))


def test_groups_noise_deterministic_per_group_seed():
    """Same seeds, same noise; another seed for one group changes that group's noise only; N(0, std²) within
    5 sigma over the batched call."""
    groups = [
        GatherGroup([torch.zeros(4, 2048)], [0], torch.tensor([0, -1, 3, 1]), None, [0.5], 1),
        GatherGroup([torch.zeros(3, 1024), torch.zeros(1024, 3)], [0, 1], torch.tensor([2, 2, -1]), None, [1.0, 2.0]),
    ]
    first = gather_channels_groups(groups, impl="triton")
    again = gather_channels_groups(groups, impl="triton")
    other = gather_channels_groups([groups[0], groups[1]._replace(seed=7)], impl="triton")
    assert_groups(again, first)
    assert_bits(other[0][0], first[0][0])
    assert not torch.equal(other[1][0], first[1][0]) and not torch.equal(other[1][1], first[1][1])
    assert not torch.equal(first[1][0], first[1][1].t())  # distinct offsets within a group
    for noise, std in ((first[0][0], 0.5), (first[1][0], 1.0), (first[1][1], 2.0)):
        n = noise.numel()
        assert abs(noise.mean()) < 5 * std / math.sqrt(n)
        assert abs(noise.std() / std - 1) < 5 / math.sqrt(2 * n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chained_guard_buffers(dtype, monkeypatch):
    """Chained rows and enumerated segments inside NaN-filled buffers: every output element written, nothing
    read or written outside."""
    conv, conv_buffer = carve((6, 4, 3, 3), dtype)
    conv.copy_(torch.randn(6, 4, 3, 3))
    before = conv_buffer.clone()
    permuted = conv.permute(2, 0, 1, 3)  # [3, 6, 4, 3]: an outer dim enumerated before the two gathered ones
    carved = []

    class GuardedTorch:
        def __getattr__(self, name):
            return getattr(torch, name)

        def empty(self, *shape, dtype, device):
            carved.append(carve(shape, dtype))
            return carved[-1][0]

    monkeypatch.setattr(gather, "torch", GuardedTorch())
    groups = [
        GatherGroup([conv, permuted], [1, 2], torch.tensor([3, -1, 0, 2, 1]), [torch.rand(5), None]),
        GatherGroup(
            [GroupOutput(0, 0), GroupOutput(0, 1)], [0, 1], torch.tensor([5, 0, -1, 2, 2, 1, 4]), None, [0.0, 0.1], 4
        ),
    ]
    actual = gather_channels_groups(groups, impl="triton")
    assert len(carved) == 2  # the consumed outputs are never stored
    for out, (expected_out, buffer) in zip(actual[1], carved, strict=True):
        assert out is expected_out and not out.isnan().any()
        assert buffer[:1500].isnan().all() and buffer[1500 + out.numel() :].isnan().all()
    assert torch.equal(before.view(BITS[dtype]), conv_buffer.view(BITS[dtype]))
    monkeypatch.undo()
    assert_groups(actual, per_group(groups, "triton"))


def test_an_index_the_host_did_not_check_never_reads_out_of_bounds():
    """An index map given on the device is not read by the host: the kernel reads values outside [-1, size) as -1
    (a zero slice), here through the launcher with the checks bypassed and the source in a NaN-filled buffer."""
    from cgap_triton.kernels._groups import CheckedGroup, CheckedGroups, Entry

    src, _ = carve((4, 3), torch.float32)
    src.copy_(torch.randn(4, 3))
    index = torch.tensor([2, 4, -7, 99, 0, -1])
    entry = Entry(src, None, 0, src.shape, src.dtype, None, 0.0)
    (out,) = gather.gather_groups_triton(CheckedGroups([CheckedGroup([entry], index, 0)], src.device))[0]
    live = (index >= 0) & (index < 4)
    assert torch.equal(out[live], src[index[live]]) and not out[~live].view(torch.int32).any()


def test_host_data_goes_in_one_buffer():
    """CPU index maps, then CPU vectors (deduplicated, float32), then the table: one buffer, one copy."""
    from cgap_triton.kernels._groups import check_gather_groups, host_layout, send

    cpu = torch.device("cpu")  # host data, whatever device the tensors are on
    shared = torch.rand(3, dtype=torch.float64, device=cpu)
    groups = [
        GatherGroup(
            [torch.randn(4, 2)], [0], torch.tensor([3, 0, -1], device=cpu), [shared], [torch.rand(3, device=cpu)]
        ),
        GatherGroup([torch.randn(2, 5)], [1], torch.tensor([4, 1], device=cpu), None, None),
        GatherGroup([torch.randn(3)], [0], torch.tensor([0, 2, 1], device=cpu), [shared], None),
    ]
    checked = check_gather_groups(groups)
    layout = host_layout(checked)
    table = torch.arange(6, dtype=torch.int64, device=cpu).view(2, 3)  # built on the host, as the kernel's is
    buffer, table_offset = send(checked, layout, table, fix=lambda t, base: t.add_(base - base))
    buffer = buffer.cpu()
    assert buffer.numel() == table_offset + 48 and table_offset % 8 == 0
    for g, group in enumerate(groups):
        start = layout.index_offsets[g]
        assert torch.equal(buffer[start : start + 8 * group.index.numel()].view(torch.int64), group.index)
    assert len(layout.vector_offsets) == 2  # the shared scale once
    for vector in (shared, groups[0].noise_stds[0]):
        start = layout.vector_offsets[id(vector)]
        assert torch.equal(buffer[start : start + 4 * vector.numel()].view(torch.float32), vector.float())
    assert torch.equal(buffer[table_offset:].view(torch.int64), table.view(-1))


def bad_groups() -> list[GatherGroup]:
    return [
        GatherGroup([torch.randn(4, 3), torch.randn(2, 4)], [0, 1], torch.tensor([0, 3, -1])),
        GatherGroup([GroupOutput(0, 1), torch.randn(3)], [1, 0], torch.tensor([2, 2, 0, 1]), None, [0.1, 0.0], 4),
    ]


BAD_GROUPS = {
    # Index maps and std vectors given on the CPU are checked there (on the device they are not: no host sync).
    "index above": (
        1,
        dict(index=torch.tensor([0, 3], device="cpu")),
        r"^groups\[1\]\.index: values must be in \[-1, 3\); found 3",
    ),
    "index below": (
        0,
        dict(index=torch.tensor([0, -2, 1], device="cpu")),
        r"^groups\[0\]\.index: values must be in \[-1, 4\); found -2",
    ),
    "index dtype": (0, dict(index=torch.tensor([0], dtype=torch.int32)), r"^groups\[0\]\.index: expected dtype int64"),
    "index 2-D": (1, dict(index=torch.tensor([[0]])), r"^groups\[1\]\.index: expected a 1-D tensor"),
    "index meta": (1, dict(index=torch.tensor([0], device="meta")), r"^groups\[1\]\.index: .*meta"),
    "sizes": (1, dict(tensors=[GroupOutput(0, 1), torch.randn(4)]), r"^groups\[1\]\.tensors: one index map needs"),
    "dim": (1, dict(dims=[2, 0]), r"^groups\[1\]\.dims\[0\]: expected a dim in \[-2, 2\)"),
    "dims count": (0, dict(dims=[0]), r"^groups\[0\]\.dims: expected one dim per tensor"),
    "dtype": (
        0,
        dict(tensors=[torch.zeros(4, 3, dtype=torch.int32), torch.randn(2, 4)]),
        r"^groups\[0\]\.tensors\[0\]",
    ),
    "meta tensor": (1, dict(tensors=[GroupOutput(0, 1), torch.zeros(3, device="meta")]), r"^groups\[1\]\.tensors\[1\]"),
    "scale length": (1, dict(scales=[None, torch.ones(3)]), r"^groups\[1\]\.scales\[1\]: expected shape \(4,\)"),
    "scale int": (0, dict(scales=[torch.ones(3, dtype=torch.int64), None]), r"^groups\[0\]\.scales\[0\]: expected"),
    "std negative": (1, dict(noise_stds=[-0.1, 0.0]), r"^groups\[1\]\.noise_stds\[0\]: expected a float >= 0"),
    "std nan": (
        1,
        dict(noise_stds=[0.0, torch.tensor([0.1, NAN, 0.0, 0.0], device="cpu")]),
        r"^groups\[1\]\.noise_stds\[1\]: .*nan",
    ),
    "std inf": (
        0,
        dict(noise_stds=[torch.tensor([INF, 0.0, 0.0], device="cpu"), 0.0]),
        r"^groups\[0\]\.noise_stds\[0\]: .*inf",
    ),
    "seed": (1, dict(seed=2**31), r"^groups\[1\]\.seed: expected an int in \[0, 2\*\*31\)"),
    "later group": (1, dict(tensors=[GroupOutput(1, 0), torch.randn(3)]), r"^groups\[1\]\.tensors\[0\]: .*earlier"),
    "no such output": (
        1,
        dict(tensors=[GroupOutput(0, 2), torch.randn(3)]),
        r"^groups\[1\]\.tensors\[0\]: .*2 outputs",
    ),
    "used twice": (1, dict(tensors=[GroupOutput(0, 1), GroupOutput(0, 1)]), r"^groups\[1\]\.tensors\[1\]: .*used once"),
}


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("case", BAD_GROUPS)
def test_groups_bad_input_names_group_and_argument(case, impl, launches):
    g, change, match = BAD_GROUPS[case]
    groups = bad_groups()
    groups[g] = groups[g]._replace(**change)
    with pytest.raises(ValueError, match=match):
        gather_channels_groups(groups, impl=impl)
    with pytest.raises(ValueError, match=r"^groups: expected a sequence of GatherGroup, got one GatherGroup"):
        gather_channels_groups(bad_groups()[0], impl=impl)
    with pytest.raises(ValueError, match=r"^groups\[2\]: expected a GatherGroup"):
        gather_channels_groups([*bad_groups(), "not a group"], impl=impl)
    assert launches == []


def test_surgery_gathers_a_whole_change_in_one_launch(launches):
    """apply_width_change on a small VGG (conv weights that are one group's consumer and the next's producer,
    SGD momentum, saliency): growth with noise, then pruning, each one launch (all float32), equal to the twin."""
    from cgap_triton.cgap import GroupChange, WidthChange, apply_width_change
    from cgap_triton.cgap.importance import SaliencyTracker
    from cgap_triton.models import ModelSpec, build_model

    states = []
    for impl in ("triton", "torch"):
        torch.manual_seed(0)
        model = build_model(ModelSpec("vgg", 5, 3, 8, (6, "M", 5, 7)), None, device=torch.get_default_device())
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        model(torch.randn(2, 3, 8, 8)).square().mean().backward()
        opt.step()
        tracker = SaliencyTracker(model)
        grow = {
            g.name: GroupChange.grow(model.widths[g.name], torch.tensor([1, 0]), 2, noise=0.0, seed=i)
            for i, g in enumerate(model.groups)
        }
        before = len(launches)
        apply_width_change(model, WidthChange("grow", grow), optimizer=opt, saliency=tracker.buffers, impl=impl)
        keep = {g.name: GroupChange.keep(torch.tensor([0, 2, 3])) for g in model.groups}
        apply_width_change(model, WidthChange("prune", keep), optimizer=opt, saliency=tracker.buffers, impl=impl)
        assert len(launches) - before == (2 if impl == "triton" else 0)
        states.append(model.state_dict())
    for key in states[1]:
        assert torch.equal(states[0][key], states[1][key]), key

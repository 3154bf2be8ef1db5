"""gather_channels / gather_channels_many: the Triton kernel (interpreted on CPU) against the torch twin.

Without noise the two must agree bit for bit; with noise, in distribution. Sources and outputs are also
carved from NaN-filled buffers, since the interpreter does not catch out-of-bounds access. The last test
compiles every kernel variant for sm_80 and sm_90 and checks spills.
"""

from __future__ import annotations

import itertools
import math
import os
import sys

import pytest
import torch
from cgap_triton.kernels import gather_channels, gather_channels_many, reference

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

        def empty(self, shape, dtype, device):
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
SIGNATURE = {"desc_ptr": "*i64", "index_ptr": "*i64", "n_segments": "i32", "length": "i32", "seed": "i32"}
SIGNATURE |= dict.fromkeys(["DTYPE", "INNER_DIMS", "HAS_SCALE", "HAS_NOISE", "INDEX_DTYPE"], "constexpr")
SIGNATURE |= dict.fromkeys(["SEGMENTS_BLOCK", "BLOCK"], "constexpr")


@pytest.mark.skipif(not os.path.exists(PTXAS), reason="the triton wheel ships no ptxas")
def test_compiles_without_spills():
    """Every variant (dtype × scale × noise, plus two inner levels and int64 positions with both on) for sm_80
    and sm_90, at the largest block: no spills. Registers are printed (pytest -s)."""
    variants = []
    for arch, dtype in itertools.product((80, 90), ("float32", "float16", "bfloat16")):
        options = [(scale, noise, 1, "int32") for scale in (False, True) for noise in (False, True)]
        for scale, noise, inner_dims, index_dtype in options + [(True, True, 2, "int32"), (True, True, 2, "int64")]:
            constexprs = {"DTYPE": {"dtype": dtype}, "INNER_DIMS": inner_dims, "HAS_SCALE": scale, "HAS_NOISE": noise}
            constexprs |= {"INDEX_DTYPE": {"dtype": index_dtype}, "SEGMENTS_BLOCK": 32, "BLOCK": gather.MAX_BLOCK}
            variants.append({"signature": SIGNATURE, "constexprs": constexprs, "arch": arch})
    reports = aot_compile_many(gather._gather_channels_kernel, variants)
    for variant, report in zip(variants, reports, strict=True):
        c = variant["constexprs"]
        print(
            f"sm_{report.arch} {c['DTYPE']['dtype']:8} scale={c['HAS_SCALE']:d} noise={c['HAS_NOISE']:d} "
            f"inner_dims={c['INNER_DIMS']} {c['INDEX_DTYPE']['dtype']}: {report.registers} registers, "
            f"{report.spills} spill bytes"
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

"""channel_stats: the Triton kernel (interpreted, on CPU) against the torch reference, plus AOT builds for sm_80/90.

Tolerances: both paths convert the inputs to float32 exactly and form the same float32 products, so they differ
only in summation order, for every input dtype. The error of a float32 sum scales with Σ|terms|, so each entry is
compared within ``atol + rtol · scale`` where scale is Σ|terms| of that entry (l1, l2sq, and wg_abs for wg).
"""

from __future__ import annotations

import os
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch
from cgap_triton.kernels import ChannelStatsPlan, channel_stats, reference

triton = pytest.importorskip("triton")
stats = pytest.importorskip("cgap_triton.kernels.stats")

DTYPES = [(torch.float32, 1e-6, 2e-5), (torch.float16, 1e-6, 2e-5), (torch.bfloat16, 1e-6, 2e-5)]


def _rand(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Random values bounded away from zero (a zero would hide a missed or doubled element)."""
    values = torch.rand(*shape) + 0.5
    return (values * (torch.randint(0, 2, shape) * 2 - 1)).to(dtype)


def _scale(weights, grads, dims, out=None, momentum=None) -> list[torch.Tensor]:
    """Per entry, the Σ|terms| that bounds the error of each float32 sum (see module docstring)."""
    new = reference.channel_stats(
        [w.abs() for w in weights], None if grads is None else [g.abs() for g in grads], dim=dims
    )
    scales = [s[:, [0, 1, 3, 3]] for s in new]
    if momentum is not None:
        scales = [momentum * o.abs() + (1 - momentum) * s for o, s in zip(out, scales)]
    return scales


def _assert_close(actual: list[torch.Tensor], expected: list[torch.Tensor], scales, atol: float, rtol: float):
    assert len(actual) == len(expected)
    for i, (a, e, s) in enumerate(zip(actual, expected, scales)):
        assert a.dtype == torch.float32 and a.shape == e.shape, f"result {i}: {a.dtype} {tuple(a.shape)}"
        bad = ~((a - e).abs() <= atol + rtol * s)  # NaN counts as bad
        if bad.any():
            where = bad.nonzero()[:5].tolist()
            shown = ", ".join(f"[{r},{c}] {a[r, c].item():.8g} vs {e[r, c].item():.8g}" for r, c in where)
            raise AssertionError(f"result {i}: {int(bad.sum())} mismatches, first (actual vs expected): {shown}")


def _check(weights, grads, dims, atol, rtol, *, ema: str = "none", momentum: float = 0.75):
    """Run both paths with fresh ``out`` tensors for ``ema`` in ("none", "out", "momentum") and compare."""
    out_kernel = out_reference = None
    if ema != "none":
        out_reference = [_rand(w.shape[d], 4) for w, d in zip(weights, dims)]
        out_kernel = [o.clone() for o in out_reference]
    m = momentum if ema == "momentum" else None
    scales = _scale(weights, grads, dims, out_reference, m)
    expected = reference.channel_stats(weights, grads, out=out_reference, momentum=m, dim=dims)
    actual = channel_stats(weights, grads, out=out_kernel, momentum=m, dim=dims, impl="triton")
    _assert_close(actual, expected, scales, atol, rtol)
    if out_kernel is not None:
        assert all(a is o for a, o in zip(actual, out_kernel)), "the out tensors must be returned"
    return actual


# (shape, dim, view): view turns a freshly made tensor into a non-contiguous one
CASES = {
    "1-channel": ((1, 5), 0, None),
    "1-element": ((1,), 0, None),
    "bias": ((13,), 0, None),
    "1-per-channel": ((7, 1), 0, None),
    "prime": ((7, 11), 0, None),
    "linear-dim1": ((6, 10), 1, None),
    "conv": ((6, 5, 3, 3), 0, None),
    "conv-dim1": ((4, 5, 3, 3), 1, None),
    "long-channel": ((3, 2 * stats.MAX_BLOCK_N + 37), 0, None),
    "long-column": ((stats.MAX_BLOCK_N + 29, 2), 1, None),
    "transposed": ((9, 6), 0, lambda t: t.t()),
    "sliced-conv": ((8, 6, 5, 3), 1, lambda t: t[1::2, ::2, 1:4, :2]),
    "expanded": ((5, 1), 0, lambda t: t.expand(5, 6)),
    "permuted-3d": ((4, 6, 5), 2, lambda t: t.permute(1, 2, 0)[:, ::2]),
}


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_matches_reference(case, dtype, atol, rtol):
    shape, dim, view = CASES[case]
    make = (lambda: view(_rand(*shape, dtype=dtype))) if view else (lambda: _rand(*shape, dtype=dtype))
    w, g = make(), make()
    _check([w], [g], [dim], atol, rtol)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("with_grads", [False, True])
@pytest.mark.parametrize("ema", ["none", "out", "momentum"])
def test_many_tensors_one_call(dtype, atol, rtol, with_grads, ema):
    weights = [
        _rand(6, 3, 3, 3, dtype=dtype),
        _rand(5, 6, 3, 3, dtype=dtype)[:, 1:],
        _rand(3, 7, dtype=dtype),
        _rand(7, 5, dtype=dtype).t(),
        _rand(11, dtype=dtype),
    ]
    dims = [0, 1, 0, 1, 0]
    grads = [_rand(*w.shape, dtype=dtype) for w in weights] if with_grads else None
    actual = _check(weights, grads, dims, atol, rtol, ema=ema)
    if not with_grads and ema == "none":
        assert all(bool((a[:, 2:] == 0).all()) for a in actual), "wg columns must be 0 without grads"


@pytest.mark.parametrize("dim", [0, 1])
def test_weight_and_grad_with_different_layouts(dim):
    w = _rand(6, 5, 3, 3)
    g = _rand(6, 5, 3, 3).to(memory_format=torch.channels_last)  # strides differ: no dims merge jointly
    _check([w, g[:, 1:]], [g, w[:, 1:]], [dim, dim], 1e-6, 2e-5, ema="out")


def test_mixed_dtypes_launch_once_per_dtype_group(monkeypatch):
    launches = []
    kernel = stats._channel_l1_l2_wg_kernel

    class Counting:
        def __getitem__(self, grid):
            launches.append(grid)
            return kernel[grid]

    monkeypatch.setattr(stats, "_channel_l1_l2_wg_kernel", Counting())
    weights = [_rand(3, 4), _rand(5, 2, dtype=torch.float16), _rand(2, 3), _rand(4, 3, dtype=torch.bfloat16)]
    grads = [_rand(3, 4), _rand(5, 2), _rand(2, 3), _rand(4, 3, dtype=torch.bfloat16)]  # grads[1] is float32
    _check(weights, grads, [0] * 4, 1e-6, 2e-5, ema="momentum")
    assert sorted(launches) == [(4,), (5,), (5,)]  # (fp32, fp32) x2 channels 3+2, (fp16, fp32), (bf16, bf16)
    launches.clear()
    channel_stats([_rand(2, 3, 3, 3) for _ in range(16)], impl="triton")  # 16 convs: one launch
    assert launches == [(32,)]


def test_fp32_accumulation_for_half_inputs():
    w = torch.full((2, 3000), 300.0, dtype=torch.float16)  # 300² overflows fp16, 3000 ones stall an fp16 sum
    result = channel_stats([w], [torch.ones_like(w)], impl="triton")[0]
    expected = torch.tensor([[900_000.0, 270_000_000.0, 900_000.0, 900_000.0]] * 2)
    assert torch.equal(result, expected), result


def test_deterministic_bit_identical():
    weights = [_rand(5, 2500), _rand(4, 3, 3, 3)]
    grads = [_rand(5, 2500), _rand(4, 3, 3, 3)]
    first = channel_stats(weights, grads, dim=[0, 1], impl="triton")
    stats._table_cache.clear()
    second = channel_stats(weights, grads, dim=[0, 1], impl="triton")
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_table_cache_reuses_tables_and_reads_current_values():
    w = _rand(4, 6)
    first = channel_stats([w], impl="triton")[0]
    cached = len(stats._table_cache)
    w.mul_(2)  # same address, new values: a cached table holds addresses, not data
    second = channel_stats([w], impl="triton")[0]
    assert len(stats._table_cache) == cached
    assert torch.equal(second[:, 0], 2 * first[:, 0]) and torch.equal(second[:, 1], 4 * first[:, 1])


@pytest.mark.parametrize("momentum", [None, 0.5])
def test_guard_buffers(momentum):
    sentinel = 12345.0
    w_buffer = torch.full((9, 14, 8), float("nan"))
    g_buffer = torch.full((9, 14, 8), float("nan"))
    w = w_buffer[1:8:2, 2:12, 1:7].transpose(1, 2)  # [4, 6, 10], channels on dim 2: 10 channels
    g = g_buffer[1:8:2, 2:12, 1:7].transpose(1, 2)
    w.copy_(_rand(*w.shape))
    g.copy_(_rand(*g.shape))
    out_buffer = torch.full((23, 11), sentinel)
    out = out_buffer[2:22:2, 1:9:2]  # [10, 4], strides (22, 2)
    out.copy_(_rand(10, 4))
    out_reference = out.clone()
    expected = reference.channel_stats([w], [g], out=[out_reference], momentum=momentum, dim=2)
    scales = _scale([w], [g], [2], [out.clone()], momentum)
    result = channel_stats([w], [g], out=[out], momentum=momentum, dim=2, impl="triton")
    _assert_close(result, expected, scales, 1e-6, 2e-5)
    outside = torch.ones_like(out_buffer, dtype=torch.bool)
    outside[2:22:2, 1:9:2] = False
    assert bool((out_buffer[outside] == sentinel).all()), "the kernel wrote outside out"
    inside = torch.zeros_like(w_buffer, dtype=torch.bool)
    inside[1:8:2, 2:12, 1:7] = True
    assert bool(w_buffer[~inside].isnan().all()) and bool(g_buffer[~inside].isnan().all()), "inputs were written"


def test_guard_many_tensors_no_out():
    buffer = torch.full((64,), float("nan"))
    w1 = buffer[3 : 3 + 15].view(3, 5)
    w2 = buffer[20 : 20 + 24].view(4, 6)[:, 1:5]
    w1.copy_(_rand(3, 5))
    w2.copy_(_rand(4, 4))
    result = channel_stats([w1, w2], [w1, w2], impl="triton")
    assert all(bool(r.isfinite().all()) for r in result), "NaN from outside the inputs leaked in"
    _assert_close(result, reference.channel_stats([w1, w2], [w1, w2]), _scale([w1, w2], [w1, w2], [0, 0]), 1e-6, 2e-5)


BAD_CALLS = {
    "grad shape": (lambda: dict(weights=[torch.ones(3, 4)], grads=[torch.ones(4, 3)]), r"^grads\[0\]"),
    "grad count": (lambda: dict(weights=[torch.ones(3, 4)], grads=[]), r"^grads"),
    "empty": (lambda: dict(weights=[]), r"^weights"),
    "int dtype": (lambda: dict(weights=[torch.ones(3, 4, dtype=torch.int32)]), r"^weights\[0\]"),
    "int grad": (lambda: dict(weights=[torch.ones(3, 4)], grads=[torch.ones(3, 4, dtype=torch.int64)]), r"^grads\[0\]"),
    "momentum 1": (lambda: dict(weights=[torch.ones(3, 4)], out=[torch.zeros(3, 4)], momentum=1.0), r"^momentum"),
    "momentum < 0": (lambda: dict(weights=[torch.ones(3, 4)], out=[torch.zeros(3, 4)], momentum=-0.1), r"^momentum"),
    "momentum no out": (lambda: dict(weights=[torch.ones(3, 4)], momentum=0.5), r"^momentum"),
    "out shape": (lambda: dict(weights=[torch.ones(3, 4)], out=[torch.zeros(4, 4)]), r"^out\[0\]"),
    "out dtype": (lambda: dict(weights=[torch.ones(3, 4)], out=[torch.zeros(3, 4, dtype=torch.float64)]), r"^out\[0\]"),
    "out count": (lambda: dict(weights=[torch.ones(3, 4)], out=[]), r"^out"),
    "dim range": (lambda: dict(weights=[torch.ones(3, 4)], dim=2), r"^dim\[0\]"),
    "empty tensor": (lambda: dict(weights=[torch.ones(0, 4)]), r"^weights\[0\]"),
}


@pytest.mark.parametrize("case", BAD_CALLS)
def test_bad_input_raises_value_error_naming_the_argument(case):
    make, pattern = BAD_CALLS[case]
    kwargs = make()
    with pytest.raises(ValueError, match=pattern):
        channel_stats(kwargs.pop("weights"), kwargs.pop("grads", None), impl="triton", **kwargs)


IMPLS = ["auto", "triton", "torch"]


def _views(size: int, *views: tuple) -> list[torch.Tensor]:
    """Views (shape, strides, offset) of one zero buffer of ``size`` floats."""
    buffer = torch.zeros(size)
    return [buffer.as_strided(shape, strides, offset) for shape, strides, offset in views]


def _out_aliasing_weight() -> dict:
    buffer = torch.zeros(20)
    return dict(weights=[buffer[:15].view(5, 3)], out=[buffer.view(5, 4)])


def _out_aliasing_grad() -> dict:
    buffer = torch.zeros(40)
    return dict(grads=[buffer[10:25].view(5, 3)], out=[buffer[:20].view(5, 4)])


# Tiny calls (weights default to one [5, 3] tensor) that the Triton path got silently wrong, or that failed
# with another error than ValueError, before the checks refused them.
BAD_MEMORY_CALLS = {
    "out expanded": (lambda: dict(out=[torch.zeros(1, 4).expand(5, 4)]), r"^out\[0\]: .*do not share memory"),
    "out zero stride": (lambda: dict(out=_views(20, ((5, 4), (4, 0), 0))), r"^out\[0\]: .*do not share memory"),
    "out rows overlap": (lambda: dict(out=_views(20, ((5, 4), (2, 1), 0))), r"^out\[0\]: .*do not share memory"),
    "outs overlap": (
        lambda: dict(weights=[torch.ones(5, 3)] * 2, out=_views(40, ((5, 4), (4, 1), 0), ((5, 4), (4, 1), 12))),
        r"^out\[1\]: shares memory with out\[0\]",
    ),
    "outs interleaved overlap": (
        lambda: dict(weights=[torch.ones(5, 3)] * 2, out=_views(40, ((5, 4), (8, 1), 0), ((5, 4), (8, 1), 3))),
        r"^out\[1\]: shares memory with out\[0\]",
    ),
    "same out twice": (
        lambda: dict(weights=[torch.ones(5, 3)] * 3, out=[torch.zeros(5, 4), *[torch.zeros(5, 4)] * 2]),
        r"^out\[2\]: shares memory with out\[1\]",
    ),
    "out aliases weight": (_out_aliasing_weight, r"^out\[0\]: shares memory with weights\[0\]"),
    "out aliases grad": (_out_aliasing_grad, r"^out\[0\]: shares memory with grads\[0\]"),
    "out requires grad": (lambda: dict(out=[torch.zeros(5, 4, requires_grad=True)]), r"^out\[0\]: .*require grad"),
    "meta out": (lambda: dict(out=[torch.zeros(5, 4, device="meta")]), r"^out\[0\]: .*got a meta tensor"),
    "meta weight": (lambda: dict(weights=[torch.ones(5, 3, device="meta")]), r"^weights\[0\]: .*got a meta tensor"),
    "meta grad": (lambda: dict(grads=[torch.ones(5, 3, device="meta")]), r"^grads\[0\]: .*got a meta tensor"),
    "sparse weight": (lambda: dict(weights=[torch.ones(5, 3).to_sparse()]), r"^weights\[0\]: .*dense"),
}
MEMORY_PARAMS = [
    pytest.param(case, momentum, id=f"{case}-momentum={momentum}")
    for case, (make, _) in BAD_MEMORY_CALLS.items()
    for momentum in ((None, 0.5) if "out" in make() else (None,))
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case, momentum", MEMORY_PARAMS)
def test_overlapping_out_and_tensors_without_data_raise_before_any_launch(case, momentum, impl, monkeypatch):
    class NoLaunch:
        def __getitem__(self, grid):
            raise AssertionError("the kernel was launched")

    monkeypatch.setattr(stats, "_channel_l1_l2_wg_kernel", NoLaunch())
    make, pattern = BAD_MEMORY_CALLS[case]
    kwargs = dict(weights=[torch.ones(5, 3)]) | make()
    with pytest.raises(ValueError, match=pattern):
        channel_stats(kwargs.pop("weights"), kwargs.pop("grads", None), momentum=momentum, impl=impl, **kwargs)


@pytest.mark.parametrize("momentum", [None, 0.5])
@pytest.mark.parametrize("impl", IMPLS)
def test_out_views_that_share_a_buffer_but_no_element_are_accepted(impl, momentum):
    """Interleaved views of one buffer, and a layout whose strides interleave (4, 5): exact checks let them pass."""
    weights = [_rand(5, 3), _rand(5, 7), _rand(5, 2)]
    out = _views(40, ((5, 4), (8, 1), 0), ((5, 4), (8, 1), 4)) + _views(32, ((5, 4), (4, 5), 0))
    for o in out:
        o.copy_(_rand(5, 4))
    out_reference = [o.clone() for o in out]
    scales = _scale(weights, None, [0, 0, 0], out_reference, momentum)
    expected = reference.channel_stats(weights, out=out_reference, momentum=momentum)
    result = channel_stats(weights, out=out, momentum=momentum, impl=impl)
    assert all(r is o for r, o in zip(result, out))
    _assert_close(result, expected, scales, 1e-6, 2e-5)


# ------------------------------------------------------------------------------------ ChannelStatsPlan


def _odd_tensors(dtype: torch.dtype) -> tuple[list[torch.Tensor], list[int]]:
    """Every single-tensor case above but the long ones (slow under the interpreter), for one call: odd shapes,
    ranks 1-4, channel dims 0-2, transposed, sliced, expanded and permuted views."""
    weights, dims = [], []
    for case, (shape, dim, view) in CASES.items():
        if not case.startswith("long-"):
            t = _rand(*shape, dtype=dtype)
            weights.append(view(t) if view else t)
            dims.append(dim)
    return weights, dims


def _change_values(tensors: list[torch.Tensor]) -> None:
    """New values at the same addresses (an optimizer step, a new backward into the same buffers)."""
    for t in tensors:
        if t.stride().count(0):  # an expanded view: write its one real row
            t.as_strided((t.numel() // t.shape[1],), (t.stride(0),)).copy_(_rand(t.shape[0], dtype=t.dtype))
        else:
            t.copy_(_rand(*t.shape, dtype=t.dtype))


@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("momentum", [None, 0.75])
@pytest.mark.parametrize("with_grads", [False, True])
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
def test_plan_matches_one_shot_and_reference(dtype, atol, rtol, with_grads, momentum, impl):
    """A plan runs what channel_stats computes, bit for bit on the same impl, and keeps doing so as the values
    change at the same addresses (two runs: the second blends into the first's out)."""
    weights, dims = _odd_tensors(dtype)
    grads = [_rand(*w.shape, dtype=dtype) for w in weights] if with_grads else None
    if with_grads:  # a gradient whose layout differs from its weight's
        conv = [case for case in CASES if not case.startswith("long-")].index("conv")
        grads[conv] = _rand(*weights[conv].shape, dtype=dtype).to(memory_format=torch.channels_last)
    out = [_rand(w.shape[d], 4) for w, d in zip(weights, dims)]
    out_one_shot, out_reference = [o.clone() for o in out], [o.clone() for o in out]
    plan = ChannelStatsPlan(weights, grads, out=out, dim=dims, impl=impl)
    assert plan.impl == impl
    for run in range(2):
        if run:
            _change_values(weights + (grads or []))
        scales = _scale(weights, grads, dims, [o.clone() for o in out_reference], momentum)
        result = plan.run(momentum)
        assert all(r is o for r, o in zip(result, out)), "a plan returns its out tensors"
        channel_stats(weights, grads, out=out_one_shot, momentum=momentum, dim=dims, impl=impl)
        for i, (a, b) in enumerate(zip(out, out_one_shot)):
            assert torch.equal(a, b), f"run {run}, tensor {i}: the plan and the one-shot call differ"
        reference.channel_stats(weights, grads, out=out_reference, momentum=momentum, dim=dims)
        _assert_close(out, out_reference, scales, atol, rtol)


def test_plan_run_only_launches(monkeypatch):
    """After construction: one launch per dtype group per run, no table built, nothing copied to the device."""
    weights = [_rand(3, 4), _rand(5, 2, dtype=torch.float16), _rand(2, 3, 3), _rand(4, 3, dtype=torch.bfloat16)]
    grads = [_rand(*w.shape, dtype=w.dtype) for w in weights]
    out = [torch.zeros(w.shape[0], 4) for w in weights]
    plan = ChannelStatsPlan(weights, grads, out=out, impl="triton")
    launches, kernel = [], stats._channel_l1_l2_wg_kernel

    class Counting:
        def __getitem__(self, grid):
            launches.append(grid)
            return kernel[grid]

    def refuse(*args, **kwargs):
        raise AssertionError("plan.run built a table or copied to the device")

    monkeypatch.setattr(stats, "_channel_l1_l2_wg_kernel", Counting())
    monkeypatch.setattr(stats, "_table", refuse)
    monkeypatch.setattr(stats, "prepare_channel_stats", refuse)
    monkeypatch.setattr(torch.Tensor, "to", refuse)
    plan.run()
    plan(0.5)
    assert sorted(launches) == [(4,), (4,), (5,), (5,), (5,), (5,)]  # (fp32: 3 + 2, fp16: 5, bf16: 4) x 2


def test_plan_matches_only_its_own_tensors_at_their_addresses():
    w = [torch.nn.Parameter(_rand(4, 3)), torch.nn.Parameter(_rand(6, 2, 2))]
    for p in w:
        p.grad = _rand(*p.shape)
    grads, out = [p.grad for p in w], [torch.zeros(4, 4), torch.zeros(6, 4)]
    plan = ChannelStatsPlan(w, grads, out=out, impl="torch")
    assert plan.matches(w, grads, out) and plan.matches(w, grads)  # out=None: not compared
    with torch.no_grad():
        for t in w + grads + out:
            t.add_(1.0)  # new values, same tensors: still the plan's
    assert plan.matches(w, grads, out)
    assert not plan.matches(w, None, out)  # no gradients now
    assert not plan.matches(w[:1], grads[:1], out[:1])
    assert not plan.matches(w, [grads[0], grads[1].clone()], out)  # p.grad = None, then a new backward
    assert not plan.matches(w, grads, [out[0], torch.zeros(6, 4)])  # a new buffer (surgery replaces them)
    assert not plan.matches([w[0], w[1].detach()], grads, out)  # the same memory, another tensor
    assert ChannelStatsPlan(w, out=out, impl="torch").matches(w, None, out)
    old = w[1].data
    w[1].data = _rand(5, 2, 2)  # surgery: the same Parameter, new storage and shape
    assert not plan.matches(w, grads, out)
    w[1].data = old[:5]  # a view at the old address, another shape
    assert not plan.matches(w, grads, out)


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_a_stale_plan_touches_only_the_memory_it_was_built_on(impl):
    """Run after ``p.data = new`` without a rebuild: the old storage, still held by the plan, not freed memory."""
    w = torch.nn.Parameter(_rand(4, 3))
    out = torch.zeros(4, 4)
    old_w, old_out = w.detach(), out.detach()
    plan = ChannelStatsPlan([w], out=[out], impl=impl)
    w.data, out.data = _rand(6, 3), torch.zeros(6, 4)  # surgery-like swaps: same objects, new storage
    assert not plan.matches([w], None, [out])
    plan.run()
    assert bool((out == 0).all()), "a stale plan wrote into the new out"
    torch.testing.assert_close(old_out, reference.channel_stats([old_w])[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_a_plan_holds_gradients_weakly_and_refuses_to_run_once_one_is_freed(impl):
    w = torch.nn.Parameter(_rand(4, 3))
    w.grad = _rand(4, 3)
    plan = ChannelStatsPlan([w], [w.grad], out=[torch.zeros(4, 4)], impl=impl)
    plan.run()
    assert plan.matches([w], [w.grad])
    grad = weakref.ref(w.grad)
    w.grad = None  # surgery, or zero_grad(set_to_none=True)
    assert grad() is None, "the plan kept a freed gradient alive"
    w.grad = _rand(4, 3)
    assert not plan.matches([w], [w.grad])
    with pytest.raises(RuntimeError, match="a gradient this plan was built on has been freed"):
        plan.run()


PLAN_BAD_CALLS = {
    case: make
    for case, (make, _) in (BAD_CALLS | BAD_MEMORY_CALLS).items()
    if case != "momentum no out"  # a plan always has out
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", PLAN_BAD_CALLS)
def test_plan_refuses_what_channel_stats_refuses_before_any_launch(case, impl, monkeypatch):
    """The same ValueError, word for word, at construction (momentum: at run); nothing launched."""

    class NoLaunch:
        def __getitem__(self, grid):
            raise AssertionError("the kernel was launched")

    monkeypatch.setattr(stats, "_channel_l1_l2_wg_kernel", NoLaunch())
    size = 5 if case in BAD_MEMORY_CALLS else 3  # the weights those calls default to: [5, 3] and [3, 4]
    kwargs = dict(weights=[torch.ones(size, 7 - size)], out=[torch.zeros(size, 4)]) | PLAN_BAD_CALLS[case]()
    weights, grads, momentum = kwargs.pop("weights"), kwargs.pop("grads", None), kwargs.pop("momentum", None)
    with pytest.raises(ValueError) as expected:
        channel_stats(weights, grads, momentum=momentum, impl=impl, **kwargs)
    with pytest.raises(ValueError) as actual:
        ChannelStatsPlan(weights, grads, impl=impl, **kwargs).run(momentum)
    assert str(actual.value) == str(expected.value)


def test_plan_needs_out_and_checks_momentum_at_run():
    with pytest.raises(ValueError, match=r"^out: expected one float32"):
        ChannelStatsPlan([torch.ones(3, 4)], out=None)
    plan = ChannelStatsPlan([torch.ones(3, 4)], out=[torch.zeros(3, 4)])
    for bad in (1.0, -0.1, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match=r"^momentum: expected a float in \[0, 1\)"):
            plan.run(bad)
    assert torch.equal(plan.run(0)[0], torch.tensor([[4.0, 4.0, 0.0, 0.0]] * 3))


def test_triton_on_cpu_without_interpreter_raises_runtime_error():
    code = (
        "import torch\nfrom cgap_triton.kernels import channel_stats\n"
        "try:\n    channel_stats([torch.ones(3, 4)], impl='triton')\n"
        "except RuntimeError as error:\n    print('RuntimeError:', error)\n"
    )
    env = dict(os.environ, TRITON_INTERPRET="0")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "RuntimeError:" in proc.stdout and "TRITON_INTERPRET" in proc.stdout, proc.stdout


def _aot_variants(arch: int) -> list[tuple[str, dict]]:
    fp32, fp16, bf16 = {"dtype": "float32"}, {"dtype": "float16"}, {"dtype": "bfloat16"}
    base = dict(W_DTYPE=fp32, G_DTYPE=fp32, HAS_GRAD=True, HAS_OUT=True, HAS_MOMENTUM=True, RANK=1, BLOCK_T=16)
    base["BLOCK_N"] = stats.MAX_BLOCK_N
    variants = []
    for grad in (False, True):
        for mode, flags in {"new": (False, False), "out": (True, False), "ema": (True, True)}.items():
            variants.append(
                (f"fp32 grad={grad} {mode}", dict(base, HAS_GRAD=grad, HAS_OUT=flags[0], HAS_MOMENTUM=flags[1]))
            )
    variants.append(("fp16 grad ema", dict(base, W_DTYPE=fp16, G_DTYPE=fp16)))
    variants.append(("bf16 grad ema", dict(base, W_DTYPE=bf16, G_DTYPE=bf16)))
    variants.append(("bf16 w, fp32 g", dict(base, W_DTYPE=bf16)))
    variants.append(("fp32 rank2 (dim=1)", dict(base, RANK=2)))
    variants.append(("fp32 rank3", dict(base, RANK=3)))
    variants.append(("fp16 rank2 small block", dict(base, W_DTYPE=fp16, G_DTYPE=fp16, RANK=2, BLOCK_N=64)))
    return [(name, c) for name, c in variants]


def test_aot_compiles_for_sm80_sm90_without_spills():
    import triton_aot

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():
        pytest.skip("the triton wheel has no bundled ptxas")
    signature = {"new_ptr": "*fp32", "table_ptr": "*i64", "num_tensors": "i32", "momentum": "fp32"}
    jobs = []
    for arch in (80, 90):
        for name, constexprs in _aot_variants(arch):
            signature_full = dict(signature, **{k: "constexpr" for k in constexprs})
            num_warps = stats.num_warps_for(constexprs["BLOCK_N"])
            jobs.append(
                (arch, name, dict(signature=signature_full, constexprs=constexprs, arch=arch, num_warps=num_warps))
            )
    reports = triton_aot.aot_compile_many(stats._channel_l1_l2_wg_kernel, [job for _, _, job in jobs])
    for (arch, name, _), report in zip(jobs, reports):
        print(f"sm_{arch} {name:28s} registers={report.registers:3d} spills={report.spills}")
    spilled = [(arch, name, r.spills) for (arch, name, _), r in zip(jobs, reports) if r.spills]
    assert not spilled, f"register spills (arch, variant, bytes): {spilled}"

"""Kernel sizes the interpreter cannot afford, on a CUDA device (``make gpu-check`` runs them): every layer of
VGG-19 in one ``channel_stats`` call, channels of a million elements, hundreds of tensors in one
``gather_channels_groups`` call. Compared with the torch twins as the small cases are."""

from __future__ import annotations

import pytest
import torch
from cgap_triton.kernels import GatherGroup, channel_stats, gather_channels_groups, reference

from cgap_triton.models import VGG_CFGS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DTYPES = [torch.float32, torch.bfloat16]


def vgg19_weights(dtype) -> list[torch.Tensor]:
    widths = [c for c in VGG_CFGS["vgg19"] if c != "M"]
    shapes = [(c_out, c_in, 3, 3) for c_in, c_out in zip([3, *widths], widths)]
    return [torch.randn(s, device="cuda").to(dtype) for s in shapes]


def close(actual, expected, weights, grads, dims=None):
    """Within float32 rounding of the sums: the tolerance scales with Σ|terms| (the twin's sums of |w|, |w·g|)."""
    bound = reference.channel_stats(
        [w.abs() for w in weights], [g.abs() for g in grads], dim=0 if dims is None else dims
    )
    for a, e, b in zip(actual, expected, bound):
        limit = 1e-6 + 2e-5 * b[:, [0, 1, 3, 3]]
        assert bool(((a - e).abs() <= limit).all()), (a - e).abs().max()


@pytest.mark.parametrize("dtype", DTYPES)
def test_channel_stats_of_all_vgg19_layers_in_one_call(dtype):
    weights = vgg19_weights(dtype)
    grads = [torch.randn_like(w) for w in weights]
    close(channel_stats(weights, grads, impl="triton"), reference.channel_stats(weights, grads), weights, grads)
    dims = [1] * len(weights)  # consumer columns, strided
    actual = channel_stats(weights, grads, dim=dims, impl="triton")
    close(actual, reference.channel_stats(weights, grads, dim=dims), weights, grads, dims)


@pytest.mark.parametrize("dtype", DTYPES)
def test_channel_stats_with_a_million_elements_per_channel(dtype):
    weights = [torch.randn(3, 1024, 32, 32, device="cuda").to(dtype)]  # 1,048,576 per channel
    grads = [torch.randn_like(weights[0])]
    close(channel_stats(weights, grads, impl="triton"), reference.channel_stats(weights, grads), weights, grads)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_of_hundreds_of_tensors_in_one_call(dtype):
    torch.manual_seed(0)
    groups = []
    for g in range(60):  # 60 groups of 5 tensors: 300 tensors, VGG-19-sized and smaller
        width = 64 << (g % 4)
        index = torch.randint(-1, width, (width + width // 4,), device="cuda")
        tensors = [torch.randn(width, 3, 3, 3, device="cuda").to(dtype)] + [
            torch.randn(width, device="cuda").to(dtype) for _ in range(4)
        ]
        scales = [None, torch.rand(index.numel(), device="cuda"), None, None, None]
        groups.append(GatherGroup(tensors, [0] * 5, index, scales, [0.0] * 5, g))
    actual = gather_channels_groups(groups, impl="triton")
    expected = reference.gather_channels_groups(groups)
    for outs, wants in zip(actual, expected):
        for out, want in zip(outs, wants):
            assert torch.equal(out, want)  # copies and one multiply per element: the same bits

"""GPU kernels for structural training: per-channel statistics and channel gather/scatter.

Public API (each with a pure-torch twin of the same signature in ``cgap_triton.kernels.reference``):

- :func:`channel_stats` — per-channel ``l1 = Σ|w|``, ``l2sq = Σw²``, ``wg = Σw·g``, ``wg_abs = Σ|w·g|``
  for a whole sequence of tensors in one launch, float32 accumulation, optional fused EMA.
- :func:`gather_channels` — rebuild a tensor along one dim through an index map (``-1`` = zeros), with an
  optional per-slice scale and Gaussian noise: the primitive of growing and pruning channels.
- :func:`gather_channels_many` — one index map applied to many (tensor, dim) pairs in one launch.

``impl`` selects the implementation: ``"auto"`` (Triton for CUDA tensors, the torch twin for CPU
tensors), ``"triton"`` (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``) or ``"torch"``.
This package imports only torch (and triton when a Triton path runs): it works without triton.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import reference
from ._checks import check_channel_stats_args, check_gather_args, resolve_impl

__all__ = ["channel_stats", "gather_channels", "gather_channels_many", "reference"]


def channel_stats(
    weights: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor] | None = None,
    *,
    out: Sequence[torch.Tensor] | None = None,
    momentum: float | None = None,
    dim: int | Sequence[int] = 0,
    impl: str = "auto",
) -> list[torch.Tensor]:
    """Per-channel statistics of each tensor, channels along ``dim`` (0 by default), in one launch.

    For channel c of tensor w (and its gradient g), summing over every other dim in float32::

        l1 = Σ|w|    l2sq = Σ w²    wg = Σ w·g    wg_abs = Σ |w·g|

    Args:
        weights: tensors (float32/float16/bfloat16, any shape, any strides) on one device.
        grads: None, or one tensor per weight with the same shape.
        out: None, or one float32 ``[C_i, 4]`` tensor per weight, written in place.
        momentum: with ``out``, blend instead of overwrite: ``out = m·out + (1 − m)·new``, m in [0, 1).
        dim: the channel dim, one for all tensors or one per tensor (0 = output channels of a conv or
            linear weight, 1 = their input columns).
        impl: "auto", "triton" or "torch" (see the module docstring).

    Returns:
        One float32 ``[C_i, 4]`` tensor per weight (the ``out`` tensors when given), columns
        ``l1, l2sq, wg, wg_abs``; the last two are 0 when ``grads`` is None.
    """
    weights, grads, out, momentum, dims = check_channel_stats_args(weights, grads, out, momentum, dim)
    if resolve_impl(impl, weights[0].device) == "torch":
        return reference.channel_stats(weights, grads, out=out, momentum=momentum, dim=dims)
    from .stats import channel_stats_triton

    return channel_stats_triton(weights, grads, out=out, momentum=momentum, dims=dims)


def gather_channels_many(
    tensors: Sequence[torch.Tensor],
    dims: Sequence[int],
    index: torch.Tensor,
    *,
    scales: Sequence[torch.Tensor | None] | None = None,
    noise_stds: Sequence[float | torch.Tensor] | None = None,
    seed: int = 0,
    impl: str = "auto",
) -> list[torch.Tensor]:
    """Apply one index map to many (tensor, dim) pairs in one launch; see :func:`gather_channels`.

    Output k, slice j along ``dims[k]``::

        out[k][j] = (index[j] >= 0 ? tensors[k][index[j]] · scales[k][j] : 0) + noise_stds[k][j] · N(0, 1)

    Args:
        tensors: float32/float16/bfloat16 tensors on one device, any strides; their sizes along
            ``dims`` must all equal the size the index refers to.
        dims: the channel dim of each tensor.
        index: int64 1-D index map with values in [-1, size); -1 gives a zero slice (a new unit).
        scales: None, or per tensor None or a float tensor with one factor per index.
        noise_stds: None, or per tensor a float or a float tensor with one standard deviation per index.
        seed: noise seed; the same seed gives the same noise on the same path. The Triton and torch
            paths draw from different generators: their noise agrees in distribution, not in value.
        impl: "auto", "triton" or "torch".

    Returns:
        New tensors (contiguous), each in the dtype of its input, of size ``len(index)`` along its dim.
    """
    checked = check_gather_args(tensors, dims, index, scales, noise_stds, seed)
    return _gather(*checked, seed=seed, impl=impl)


def _gather(tensors, dims, index, scales, noise_stds, *, seed: int, impl: str) -> list[torch.Tensor]:
    """Dispatch validated gather arguments to the torch twin or the Triton kernel."""
    if resolve_impl(impl, tensors[0].device) == "torch":
        return reference.gather_channels_many(tensors, dims, index, scales=scales, noise_stds=noise_stds, seed=seed)
    from .gather import gather_channels_many_triton

    return gather_channels_many_triton(tensors, dims, index, scales=scales, noise_stds=noise_stds, seed=seed)


def gather_channels(
    src: torch.Tensor,
    index: torch.Tensor,
    dim: int,
    *,
    scale: torch.Tensor | None = None,
    noise_std: float | torch.Tensor = 0.0,
    seed: int = 0,
    impl: str = "auto",
) -> torch.Tensor:
    """Rebuild ``src`` along ``dim`` through an index map.

    Output slice j is ``src``'s slice ``index[j]`` times ``scale[j]`` (if given) plus
    ``noise_std · N(0, 1)`` (deterministic in ``seed``); ``index[j] == -1`` gives zeros (plus noise).
    Growth is a map with repeats and -1s, pruning a map of the kept indices, Net2Net splitting a map
    with a scale vector. ``noise_std`` is a float or one standard deviation per index.
    The output is a new contiguous tensor in ``src``'s dtype.
    """
    checked = check_gather_args([src], [dim], index, [scale], [noise_std], seed, single=True)
    return _gather(*checked, seed=seed, impl=impl)[0]

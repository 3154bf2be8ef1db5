"""Pure-torch twins of every public kernel: the specification, the CPU path and the test oracle.

Each function here has exactly the signature of its Triton counterpart in ``cgap_triton.kernels``
(``impl`` included, which the twin accepts and ignores) and raises the same ``ValueError`` on bad input.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._checks import check_channel_stats_args, check_gather_args
from ._groups import CheckedGroups, GatherGroup, VectorSlice, check_gather_groups, staged_views

__all__ = ["channel_stats", "gather_channels", "gather_channels_groups", "gather_channels_many"]


def channel_stats(
    weights: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor] | None = None,
    *,
    out: Sequence[torch.Tensor] | None = None,
    momentum: float | None = None,
    dim: int | Sequence[int] = 0,
    impl: str = "auto",
) -> list[torch.Tensor]:
    """Per-channel statistics of each tensor, channels along ``dim`` (0 by default).

    For channel c of tensor w (and its gradient g), all sums over the other dims, in float32::

        l1 = Σ|w|    l2sq = Σ w²    wg = Σ w·g    wg_abs = Σ |w·g|

    Returns one float32 ``[C, 4]`` tensor per input, columns in that order (``wg`` and ``wg_abs``
    are 0 without ``grads``). With ``out``, the result is written into ``out``; with ``momentum``
    m as well, it is blended: ``out = m·out + (1 − m)·new``. The tensors in ``out`` are returned.
    """
    return _channel_stats(*check_channel_stats_args(weights, grads, out, momentum, dim))


def _channel_stats(weights, grads, out, momentum, dims) -> list[torch.Tensor]:
    """The computation of :func:`channel_stats` on checked arguments (lists, dims resolved): what a prepared
    ``ChannelStatsPlan`` on the torch path runs each step, without checking again."""
    results = []
    for i, (w, d) in enumerate(zip(weights, dims)):
        w32 = w.movedim(d, 0).reshape(w.shape[d], -1).float()
        new = torch.zeros(w.shape[d], 4, dtype=torch.float32, device=w.device)
        new[:, 0] = w32.abs().sum(1)
        new[:, 1] = (w32 * w32).sum(1)
        if grads is not None:
            product = w32 * grads[i].movedim(d, 0).reshape(w.shape[d], -1).float()
            new[:, 2] = product.sum(1)
            new[:, 3] = product.abs().sum(1)
        if out is None:
            results.append(new)
        elif momentum is None:
            results.append(out[i].copy_(new))
        else:
            results.append(out[i].mul_(momentum).add_(new, alpha=1.0 - momentum))
    return results


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
    """One index map applied to many (tensor, dim) pairs; the batched form of :func:`gather_channels`.

    Output k, slice j along ``dims[k]``::

        out[k][j] = (index[j] >= 0 ? tensors[k][index[j]] · scales[k][j] : 0) + noise_stds[k][j] · N(0, 1)

    computed in float32 and returned in the dtype of ``tensors[k]``. ``scales[k]`` is None (all ones)
    or a float tensor with one entry per index; ``noise_stds[k]`` a float or such a tensor. The noise of
    tensor k comes from a generator seeded with ``seed + k``: deterministic, and equal to the Triton
    path's noise in distribution only (the two use different random number generators).
    """
    return _gather(*check_gather_args(tensors, dims, index, scales, noise_stds, seed), seed)


def _gather(tensors, dims, index, scales, noise_stds, seed) -> list[torch.Tensor]:
    results = []
    for k, (src, d, scale, std) in enumerate(zip(tensors, dims, scales, noise_stds)):
        shape = [1] * src.dim()
        shape[d] = index.numel()
        gathered = src.index_select(d, index.clamp(min=0)).float()
        if scale is not None:
            gathered = gathered * scale.float().view(shape)
        # -1 slices are exact +0.0 (never 0 · inf or -0.0 from a borrowed slice)
        gathered = torch.where((index >= 0).view(shape), gathered, torch.zeros((), device=src.device))
        if isinstance(std, torch.Tensor) or std > 0:
            generator = torch.Generator(device=src.device).manual_seed(seed + k)
            noise = torch.randn(gathered.shape, generator=generator, device=src.device, dtype=torch.float32)
            std = std.float().view(shape) if isinstance(std, torch.Tensor) else std
            gathered = gathered + noise * std
        results.append(gathered.to(src.dtype))
    return results


def gather_channels_groups(
    groups: Sequence[GatherGroup],
    *,
    impl: str = "auto",
) -> list[list[torch.Tensor | None]]:
    """Several index maps, each with its (tensor, dim) pairs: group by group, what ``gather_channels_many(tensors,
    dims, index, scales=, noise_stds=, seed=)`` computes for it, noise included (value for value).

    A ``GroupOutput(g, k)`` among a group's tensors stands for output k of the earlier group g, computed first;
    that output is then the later group's input, not a result: its place in the returned lists is None. Index
    maps and per-slice vectors given on the CPU for tensors on another device go there in one copy.
    """
    return _gather_groups(check_gather_groups(groups))


def _gather_groups(checked: CheckedGroups) -> list[list[torch.Tensor | None]]:
    """The computation of :func:`gather_channels_groups` on checked arguments."""
    indexes, moved = staged_views(checked)
    results: list[list[torch.Tensor | None]] = []
    for group, index in zip(checked.groups, indexes):
        tensors = []
        for entry in group.entries:
            if entry.source is None:  # an earlier output, consumed here
                g, k = entry.consumes
                tensors.append(results[g][k])
                results[g][k] = None
            else:
                tensors.append(entry.source)
        dims = [entry.dim for entry in group.entries]
        scales = [None if e.scale is None else _moved(e.scale, moved) for e in group.entries]
        stds = [e.std if type(e.std) is float else _moved(e.std, moved) for e in group.entries]
        for k, e in enumerate(group.entries):  # noise relative to the std of the input, as it is read
            if e.std_of_input and (isinstance(stds[k], torch.Tensor) or stds[k]):
                factor = (tensors[k].float().std().double() * e.std_of_input).float()
                std = stds[k] if isinstance(stds[k], torch.Tensor) else factor.new_full((group.length,), stds[k])
                stds[k] = std.float() * factor
        results.append(_gather(tensors, dims, index, scales, stds, group.seed))
    return results


def _moved(vector, moved: dict[int, torch.Tensor]) -> torch.Tensor:
    """A per-slice vector (or a ``VectorSlice`` of one) as staged on the tensors' device."""
    if type(vector) is VectorSlice:
        base = moved.get(id(vector.base), vector.base)
        return base[vector.start : vector.start + vector.length]
    return moved.get(id(vector), vector)


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
    """Slice j of the output along ``dim`` is ``src``'s slice ``index[j]`` times ``scale[j]`` (if given),
    plus ``noise_std · N(0, 1)`` noise (deterministic in ``seed``); ``index[j] == -1`` gives zeros
    (plus noise). ``noise_std`` is a float or one standard deviation per index. Output dtype = src dtype.
    """
    return _gather(*check_gather_args([src], [dim], index, [scale], [noise_std], seed, single=True), seed)[0]

"""Optimizer state that survives channel pruning done by other code.

Pruning libraries such as Torch-Pruning replace each pruned ``nn.Parameter`` by a new, smaller one. The
optimizer built before still points at the old objects: stepping it would update tensors the model no longer
uses, and building a new one throws away momentum and second moments. :func:`carry_optimizer_state` re-points
the optimizer at the live parameters and cuts their per-element state (SGD ``momentum_buffer``, Adam
``exp_avg`` / ``exp_avg_sq``, ...) through :func:`cgap_triton.kernels.gather_channels_many`, so that every kept
element keeps exactly its state. What was kept is described by :class:`ParameterSlice` records, which a
library adapter collects while pruning (see ``cgap_triton.integrations.torch_pruning.record_pruning``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from cgap_triton.kernels import gather_channels_many

__all__ = ["ParameterSlice", "carry_optimizer_state"]

_GATHER_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class ParameterSlice:
    """How a live parameter was cut out of an original one.

    ``cuts`` are applied in order: each ``(dim, kept)`` keeps the slices ``kept`` (int64, 1-D) along ``dim`` of
    the tensor left by the previous cut. A convolution pruned on its outputs and then on its inputs has two.
    """

    original: torch.nn.Parameter
    cuts: tuple[tuple[int, torch.Tensor], ...]

    def shape(self) -> tuple[int, ...]:
        """The shape the cuts lead to (the live parameter's shape when the record is right)."""
        shape = list(self.original.shape)
        for dim, kept in self.cuts:
            shape[dim] = kept.numel()
        return tuple(shape)


def carry_optimizer_state(
    optimizer: torch.optim.Optimizer,
    slices: Mapping[torch.nn.Parameter, ParameterSlice],
    *,
    model: torch.nn.Module | None = None,
    impl: str = "auto",
) -> int:
    """Point ``optimizer`` at the live parameters of ``slices`` and cut their state the same way.

    Args:
        optimizer: any ``torch.optim`` optimizer built on the parameters before pruning.
        slices: live parameter → :class:`ParameterSlice` naming the original it replaced and the kept indices.
        model: if given, every parameter the optimizer holds afterwards must be a parameter of ``model``;
            a replaced parameter with no record raises instead of silently training a dead tensor.
        impl: gather implementation, "auto", "triton" or "torch" (see :mod:`cgap_triton.kernels`).

    State tensors shaped like the original parameter are cut (one gather launch per cut for all of them);
    other state (the scalar ``step``) is kept as it is. Returns the number of parameters re-pointed.
    """
    by_original = {id(s.original): (live, s) for live, s in slices.items()}
    moved = 0
    for group_index, group in enumerate(optimizer.param_groups):
        for position, param in enumerate(group["params"]):
            if id(param) not in by_original:
                continue
            live, record = by_original[id(param)]
            if record.shape() != tuple(live.shape):
                raise ValueError(
                    f"slices: the cuts of a parameter of shape {tuple(param.shape)} lead to {record.shape()}, "
                    f"but the live parameter has shape {tuple(live.shape)}"
                )
            state = optimizer.state.pop(param, None)
            if state:
                optimizer.state[live] = _cut_state(state, record, f"optimizer.param_groups[{group_index}]", impl)
            group["params"][position] = live
            moved += 1
    if model is not None:
        _check_live(optimizer, model)
    return moved


def _cut_state(state: dict, record: ParameterSlice, where: str, impl: str) -> dict:
    shape = tuple(record.original.shape)
    cut = {key: value for key, value in state.items() if isinstance(value, torch.Tensor) and value.dim() > 0}
    for key, value in cut.items():
        if tuple(value.shape) != shape:
            raise ValueError(
                f"{where}: state {key!r} has shape {tuple(value.shape)}, neither a scalar nor the parameter's "
                f"shape {shape}; cannot tell which of its entries belong to the kept channels"
            )
    kernel_keys = [key for key, value in cut.items() if value.dtype in _GATHER_DTYPES]
    for dim, kept in record.cuts:
        if kernel_keys:
            index = kept.to(cut[kernel_keys[0]].device)
            tensors = [cut[key] for key in kernel_keys]
            for key, value in zip(kernel_keys, gather_channels_many(tensors, [dim] * len(tensors), index, impl=impl)):
                cut[key] = value
        for key in cut.keys() - set(kernel_keys):  # e.g. float64 state: outside the kernel's dtypes
            cut[key] = cut[key].index_select(dim, kept.to(cut[key].device))
    return {**state, **cut}


def _check_live(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> None:
    live = {id(p) for p in model.parameters()}
    stale = [
        f"param_groups[{g}]['params'][{i}] (shape {tuple(p.shape)})"
        for g, group in enumerate(optimizer.param_groups)
        for i, p in enumerate(group["params"])
        if id(p) not in live
    ]
    if stale:
        raise ValueError(
            f"optimizer: {len(stale)} parameter(s) are no longer in the model and no recorded cut replaces them: "
            f"{', '.join(stale[:5])}{' ...' if len(stale) > 5 else ''}; record the pruning (record_pruning) "
            "around every structural change"
        )

"""Surgery: apply a WidthChange to a model, its optimizer state and its saliency buffers, in place.

Each group is rewritten by one ``gather_channels_many`` call covering its producers (filters, BN γ/β,
running statistics), its consumers (the next layer's input columns), the optimizer state of each of
those parameters and the group's saliency buffer. Parameters keep their identity (``p.data`` is
replaced), so the optimizer needs no rebuild.

Callers must drop every tensor that still holds an autograd graph (the last loss) first: such a
graph keeps the old AccumulateGrad nodes, whose stale shapes fail the next backward.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..kernels import gather_channels_many
from ..models import GrowableNet
from .change import GroupChange, WidthChange

INITS = ("copy_zero_out", "split", "random_zero_out")


@torch.no_grad()
def apply_width_change(
    model: GrowableNet,
    change: WidthChange,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    saliency: dict[str, torch.Tensor] | None = None,
    impl: str = "auto",
) -> None:
    """Rewrite every group of ``change`` in ``model`` (and ``optimizer`` state, ``saliency`` buffers).

    Surgery decides nothing: each group's change carries its index map and, for growth, the init rule, the
    noise and its seed. Growth (``change.kind == "grow"``), by the group's ``init``:
      - ``copy_zero_out``: a child copies its parent's filter (plus noise of std ``noise × std(filter
        weights)``) and BN; its outgoing columns are zero, so the function is unchanged.
      - ``split``: as above, and parent and child share the parent's outgoing columns (× 0.5 each).
      - ``random_zero_out``: new filters are Kaiming-normal, BN γ = 1, β = 0; outgoing columns zero.
    A child starts with half its parent's saliency and the parent keeps the other half. New units'
    optimizer state is zero. Pruning maps keep the listed units and carry everything else over.
    ``impl`` picks the gather implementation (see ``cgap_triton.kernels``).
    """
    groups = {g.name: g for g in model.groups}
    for name, group_change in change.groups.items():
        if name not in groups:
            raise ValueError(f"change: unknown group {name!r}; the model's groups are {list(groups)}")
        if group_change.init not in INITS:
            raise ValueError(f"change.groups[{name!r}].init: expected one of {INITS}, got {group_change.init!r}")
    for p in model.parameters():
        p.grad = None
    for name, group_change in change.groups.items():
        _apply_group(model, groups[name], group_change, change.kind, optimizer, saliency, impl)
    model.sync_shapes()


def _apply_group(model, group, change: GroupChange, kind, optimizer, saliency, impl) -> None:
    init, noise, seed = change.init, change.noise, change.seed
    device = model.get_parameter(group.saliency).device
    index, new = change.index.to(device), change.new.to(device)
    old = new.logical_not().float()
    growing = kind == "grow" and bool(new.any())
    # Units that gained a child this change: the parents of the new slots.
    shared = torch.zeros_like(old)
    if growing and init != "random_zero_out":
        parents = index[new]
        shared[new] = 0.5
        shared[parents] = 0.5
    half = torch.where(shared > 0, shared, torch.ones_like(shared))

    tensors, dims, scales, stds, targets = [], [], [], [], []

    def add(tensor, dim, target, scale=None, std=0.0):
        tensors.append(tensor)
        dims.append(dim)
        scales.append(scale)
        stds.append(std)
        targets.append(target)

    params = dict(model.named_parameters())
    for qualname, dim in group.producers:
        t = model.tensor(qualname)
        std = 0.0
        if growing and qualname == group.saliency:
            if init == "random_zero_out":
                fan_out = t.shape[0] * math.prod(t.shape[2:])
                std = new.float() * math.sqrt(2.0 / max(1, fan_out))
            elif noise > 0:
                std = new.float() * (noise * float(t.float().std()) if t.numel() > 1 else noise)
        add(t, dim, ("tensor", qualname), None, std)
    for qualname, dim in group.consumers:
        scale = None
        if growing:
            scale = half if init == "split" else old
        add(model.tensor(qualname), dim, ("tensor", qualname), scale)
    if optimizer is not None:
        for qualname, dim in group.producers + group.consumers:
            p = params.get(qualname)
            if p is None or p not in optimizer.state:
                continue
            for key, value in optimizer.state[p].items():
                if isinstance(value, torch.Tensor) and value.shape == p.shape:
                    add(value, dim, ("optim", p, key), old if growing else None)
    if saliency is not None and group.name in saliency:
        add(saliency[group.name], 0, ("saliency", group.name), half if growing else None)

    if init == "random_zero_out" and growing:
        index = torch.where(new, torch.full_like(index, -1), index)
    results = gather_channels_many(tensors, dims, index, scales=scales, noise_stds=stds, seed=seed, impl=impl)

    for target, result in zip(targets, results):
        if target[0] == "tensor":
            _assign(model, target[1], result)
        elif target[0] == "optim":
            optimizer.state[target[1]][target[2]] = result
        else:
            saliency[target[1]] = result
    if init == "random_zero_out" and growing:
        for qualname, _ in group.producers:
            if qualname.endswith(("bn.weight", "running_var")):
                model.tensor(qualname).data[new] = 1.0


def _assign(model: nn.Module, qualname: str, value: torch.Tensor) -> None:
    module_name, _, attr = qualname.rpartition(".")
    module = model.get_submodule(module_name)
    current = getattr(module, attr)
    if isinstance(current, nn.Parameter):
        current.data = value  # same Parameter object: the optimizer keeps tracking it
    else:
        module._buffers[attr] = value

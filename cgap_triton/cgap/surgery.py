"""Surgery: apply a WidthChange to a model, its optimizer state and its saliency buffers, in place.

Each group is planned as one gather (one index map) covering its producers (filters, BN γ/β, running
statistics), its consumers (the next layer's input columns), the optimizer state of each of those parameters
and the group's saliency buffer; a tensor an earlier group of the change already rewrites (a conv weight that
is one group's consumer and the next group's producer) is taken as that group's output. The whole change is
built into one ``GatherBatch`` (the prepared form of ``gather_channels_groups``: surgery knows every shape, so
nothing is checked again) and runs as one launch per dtype on GPU, with no host-device sync; the results are
assigned group by group, and last come the growth rules' per-group steps after the gather. The noise on a
copied filter is relative to the std of its weight as the earlier groups leave it, a std the device computes
(the batch sums the weight's moments before the gathers): the host never waits.
Parameters keep their identity (``p.data`` is replaced), so the optimizer needs no rebuild.

Callers must drop every tensor that still holds an autograd graph (the last loss) first: such a
graph keeps the old AccumulateGrad nodes, whose stale shapes fail the next backward.
"""

from __future__ import annotations

import math
import weakref
from collections import Counter
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from ..kernels import GroupOutput
from ..kernels._groups import GatherBatch, VectorSlice, host_vector
from ..models import GrowableNet
from ..models.graph import Span
from .change import GroupChange, WidthChange
from .children import orthogonal_filters

INITS = ("copy_zero_out", "split", "random_zero_out", "orthogonal_zero_out")
PARENTLESS = ("random_zero_out", "orthogonal_zero_out")  # new units copy no parent


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
      - ``orthogonal_zero_out``: as ``random_zero_out``, then the new filters are made orthogonal to the
        existing ones and to each other (``children.orthogonal_filters``).
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
    # Tensor dims shared by several groups (residual sums, concatenations): built from the widths before.
    spans = list({(s.tensor, s.dim): s for name in change.groups for s in groups[name].spans}.values())
    before = model.widths if spans else {}
    planner = _Planner(model, optimizer, saliency, impl)
    scales = _growth_scales(change)
    for p in planner.params.values():  # the model's parameters, from the table built once
        if p.grad is not None:
            p.grad = None
    for name, group_change in change.groups.items():
        group = groups[name]
        reads = planner.after_gather_reads
        if reads and reads & {qualname for qualname, _ in group.producers + group.consumers}:
            # An earlier group's step after the gather touches a tensor this group gathers: run what is
            # planned first, so that each sees the other as in sequence (not with the groups in model order).
            _run(planner, change.kind, impl)
            planner = _Planner(model, optimizer, saliency, impl)
        _plan_group(planner, group, group_change, scales[name])
        if _has_after_gather(group_change, change.kind):
            planner.after_gather_reads.update(qualname for qualname, _ in group.producers)
    if spans:
        if planner.after_gather_reads & {s.tensor for s in spans}:
            _run(planner, change.kind, impl)
            planner = _Planner(model, optimizer, saliency, impl)
        for span in spans:
            _plan_span(planner, span, change, before)
    _run(planner, change.kind, impl)
    model.sync_shapes()


def _run(planner: _Planner, kind: str, impl: str) -> None:
    """The planned groups' gathers in one call, their results assigned, then their steps after the gather."""
    results = planner.batch.run(impl)
    for targets, outputs in zip(planner.targets, results):
        _assign_results(planner, targets, outputs)
    for group, group_change in planner.groups:
        _after_gather(planner.model, group, group_change, kind)
    for qualname, dim, mask, value in planner.fills:
        tensor = planner.tensor(qualname)
        tensor.data.index_fill_(dim, mask.nonzero().view(-1).to(tensor.device), value)


class _Planner:
    """Builds each group's gather as the per-group surgery ran it, the groups taken one after the other, into
    one :class:`GatherBatch` (the planner knows every shape: nothing is checked again): a target (parameter or
    buffer, optimizer state, saliency) that an earlier group of the change rewrites is read as that group's
    output (a ``GroupOutput``), and whatever a group reads of its value (shape, std) is the value the earlier
    groups leave."""

    def __init__(self, model, optimizer, saliency, impl):
        self.model, self.optimizer, self.saliency = model, optimizer, saliency
        # Parameters and modules by name, for the many lookups of a change (``model.tensor`` walks the path each
        # time); built once per model, since surgery keeps every module and Parameter object.
        self.params, modules, self.slots, self.statics = _tables(model)
        self.modules = modules if type(model).tensor is GrowableNet.tensor else None
        self.batch = GatherBatch()
        self.targets: list[list[tuple]] = []
        self.latest: dict[tuple, tuple[int, int]] = {}  # target -> (group, position) of the output holding it
        self.groups: list[tuple] = []  # (group, its change) in order
        self.after_gather_reads: set[str] = set()  # tensors that planned groups' steps after the gather touch
        self.fills: list[tuple] = []  # (span tensor, dim, new-column mask, value): parentless units' BatchNorm

    def open(self, width: int) -> _Entry:
        """A new gather (one index map of ``width`` slots): add its tensors, then close it with the map."""
        return _Entry(self, len(self.batch), width)

    def tensor(self, qualname: str) -> torch.Tensor:
        """``model.tensor(qualname)``, read from the module's parameter or buffer table found once."""
        if self.modules is None:
            return self.model.tensor(qualname)
        module, attr, table = self.slots.get(qualname) or self.slot(qualname)
        return getattr(module, attr) if table is None else table[attr]

    def slot(self, qualname: str) -> tuple[nn.Module, str, dict | None]:
        """The module holding ``qualname``, its attribute name and the module's table (``_parameters`` or
        ``_buffers``) that holds it (None for another attribute), found once per model."""
        slots = self.slots
        found = slots.get(qualname)
        if found is None:
            module_name, _, attr = qualname.rpartition(".")
            module = None if self.modules is None else self.modules.get(module_name)
            module = self.model.get_submodule(module_name) if module is None else module
            table = next((t for t in (module._parameters, module._buffers) if t.get(attr) is not None), None)
            found = slots[qualname] = (module, attr, table)
        return found

    def static(self, group) -> tuple[tuple, tuple, tuple]:
        """What surgery reads of ``group`` at every change, found once per model: its producers and consumers as
        (qualname, dim, target, alone), and the parameters among them as (parameter, dim, alone), whose optimizer
        state it carries. ``alone``: no other group of the model (nor a span) reads the tensor, so no other gather
        of a change reads or rewrites it, and it needs no bookkeeping (see ``_Entry.add``)."""
        found = self.statics.get(group.name)
        if found is None or found[0] is not group:
            read = Counter(q for g in self.model.groups for q, _ in g.producers + g.consumers)
            read.update(s.tensor for g in self.model.groups for s in g.spans)
            alone = {q for q, n in read.items() if n == 1}
            producers = tuple((q, d, ("tensor", q), q in alone) for q, d in group.producers)
            consumers = tuple((q, d, ("tensor", q), q in alone) for q, d in group.consumers)
            pairs = group.producers + group.consumers
            owners = tuple((self.params[q], d, q in alone) for q, d in pairs if q in self.params)
            found = self.statics[group.name] = (group, (producers, consumers, owners))
        return found[1]

    def shape(self, target, tensor: torch.Tensor) -> tuple[int, ...]:
        """The shape ``target`` has after the groups planned so far."""
        earlier = self.latest.get(target)
        return tensor.shape if earlier is None else self.batch.output_shape(*earlier)


_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _tables(model: nn.Module) -> tuple[dict[str, nn.Parameter], dict[str, nn.Module], dict[str, tuple], dict]:
    """``model``'s parameters and modules by name, kept while the model lives (surgery adds or removes none);
    the third and fourth tables, filled as surgery goes, hold each tensor's (module, attribute, table) and what
    surgery reads of each group (``_Planner.static``)."""
    cached = _TABLES.get(model)
    if cached is None:
        cached = _TABLES[model] = (dict(model.named_parameters()), dict(model.named_modules()), {}, {})
    return cached


class _Entry:
    """The tensors of one gather being planned; a tensor an earlier gather rewrites is read as its output."""

    def __init__(self, planner: _Planner, g: int, width: int):
        self.planner, self.g, self.width = planner, g, width
        self.targets: list[tuple] = []
        self.deferred: list[tuple] = []  # tensors this gather already holds along another dim

    def add(self, tensor, dim, target, scale=None, std=0.0, std_of_input=0.0, alone=False) -> None:
        planner = self.planner
        if alone:  # no other gather of the change reads or rewrites this tensor
            planner.batch.add(tensor, dim if dim >= 0 else dim + tensor.dim(), scale, std, std_of_input)
            self.targets.append(target)
            return
        # (an optimizer-state target holds the parameter's state dict, which a key names by its id)
        key = ("optim", id(target[1]), target[2]) if target[0] == "optim" else target
        latest = planner.latest
        earlier = latest.get(key)
        if earlier is not None and earlier[0] == self.g:
            # The group's units on both dims of one tensor (a residual block's conv between two sums): the second
            # dim goes into a gather of its own, with the same map, that reads this one's output.
            self.deferred.append((tensor, dim, target, scale, std, std_of_input))
            return
        source = tensor if earlier is None else GroupOutput(*earlier)
        dim = dim if dim >= 0 else dim + tensor.dim()  # (the batch takes dims as they index a shape)
        latest[key] = (self.g, planner.batch.add(source, dim, scale, std, std_of_input))
        self.targets.append(target)

    def close(self, index: torch.Tensor, seed: int) -> None:
        self.planner.batch.close(index, seed)
        self.planner.targets.append(self.targets)
        if self.deferred:
            again = self.planner.open(self.width)
            for args in self.deferred:
                again.add(*args)
            again.close(index, seed)


class _Scales(NamedTuple):
    """A group's per-unit vectors in a growth change (all None where it does not grow): ``old`` is 0 on new units
    (their outgoing columns and optimizer state start at zero) and 1 elsewhere; ``half`` is 0.5 on a new unit
    and on its parent, which share its outgoing columns and saliency, and 1 elsewhere (all 1 for the parentless
    rules); ``fresh`` is 1 on new units and 0 elsewhere."""

    old: VectorSlice | None = None
    half: VectorSlice | None = None
    fresh: VectorSlice | None = None


def _growth_scales(change: WidthChange) -> dict[str, _Scales]:
    """Every group's :class:`_Scales`, computed for the whole change in a few numpy operations, as slices of one
    CPU array that the batch moves to the device in its one copy."""
    changes = change.groups
    if change.kind != "grow" or not changes:
        return dict.fromkeys(changes, _Scales())
    lengths = np.array([c.new.shape[0] for c in changes.values()])
    ends = np.cumsum(lengths)
    starts = ends - lengths
    is_new = torch.cat([c.new for c in changes.values()]).cpu().numpy()
    counts = np.concatenate([[0], np.cumsum(is_new)])
    fresh = is_new.astype(np.float32)
    vectors = np.concatenate([1 - fresh, 1 - 0.5 * fresh, fresh])  # old, half, fresh
    copies = np.repeat([c.init not in PARENTLESS for c in changes.values()], lengths)
    half = vectors[len(fresh) : 2 * len(fresh)]
    half[~copies] = 1.0
    if copies.any():  # a parent's share, at its place in the concatenation
        index = torch.cat([c.index for c in changes.values()]).cpu().numpy()
        half[(index + np.repeat(starts, lengths))[is_new & copies]] = 0.5
    base, n = torch.from_numpy(vectors), len(fresh)
    return {
        name: _Scales(VectorSlice(base, a, b - a), VectorSlice(base, n + a, b - a), VectorSlice(base, 2 * n + a, b - a))
        if grows
        else _Scales()
        for name, a, b, grows in zip(changes, starts.tolist(), ends.tolist(), (counts[ends] > counts[starts]).tolist())
    }


def _plan_group(planner: _Planner, group, change: GroupChange, scales: _Scales) -> None:
    optimizer, saliency = planner.optimizer, planner.saliency
    init, noise, seed = change.init, change.noise, change.seed
    # The change's maps stay on the CPU: the batch moves them to the device in its one copy.
    index, new = change.index.cpu(), change.new
    old, half, fresh = scales
    growing = old is not None

    entry = planner.open(index.numel())
    add = entry.add
    producers, consumers, owners = planner.static(group)
    tensor = planner.tensor
    for qualname, dim, target, alone in producers:
        t = tensor(qualname)
        std, std_of_input = 0.0, 0.0
        if growing and init in PARENTLESS and (qualname == group.saliency or (dim == 0 and t.dim() >= 2)):
            shape = planner.shape(target, t)  # every filter of the group's producers: Kaiming-normal
            std = host_vector(fresh) * math.sqrt(2.0 / max(1, shape[0] * math.prod(shape[2:])))
        elif growing and qualname == group.saliency and noise > 0:
            if math.prod(planner.shape(target, t)) > 1:
                # noise × std(filter weights as the earlier groups leave them), a std the device computes
                std, std_of_input = fresh, noise
            else:
                std = host_vector(fresh) * noise
        add(t, dim, target, None, std, std_of_input, alone)
    scale = (half if init == "split" else old) if growing else None
    for qualname, dim, target, alone in consumers:
        add(tensor(qualname), dim, target, scale, 0.0, 0.0, alone)
    if optimizer is not None:
        state, scale = optimizer.state, old if growing else None
        for p, dim, alone in owners:
            values = state.get(p)
            if values:
                shape = p.shape
                for key, value in values.items():
                    if isinstance(value, torch.Tensor) and value.shape == shape:
                        add(value, dim, ("optim", values, key), scale, 0.0, 0.0, alone)
    if saliency is not None and group.name in saliency:  # (one buffer per group)
        add(saliency[group.name], 0, ("saliency", group.name), half if growing else None, 0.0, 0.0, True)

    if init in PARENTLESS and growing:
        index = torch.where(new.cpu(), torch.full_like(index, -1), index)
    entry.close(index, seed)
    planner.groups.append((group, change))


def _plan_span(planner: _Planner, span: Span, change: WidthChange, before: dict[str, int]) -> None:
    """One gather for a tensor dim that holds several groups' units (or repeats them): its own index map, built
    segment by segment from the maps of the groups in ``change``; consumer columns of new units start at zero."""
    growing = change.kind == "grow"
    maps, scales, news = {}, {}, {}
    for seg in span.segments:
        c = change.groups.get(seg.group)
        if c is None or seg.group in maps:
            continue
        index, new = c.index.cpu(), c.new.cpu()
        if growing and c.init in PARENTLESS:
            index = torch.where(new, torch.full_like(index, -1), index)
        maps[seg.group], news[seg.group] = index, new.float()
        if growing:
            old = new.logical_not().float()
            if c.init == "split":
                shared = torch.zeros_like(old)
                shared[new] = 0.5
                shared[index[new]] = 0.5
                scales[seg.group] = torch.where(shared > 0, shared, torch.ones_like(shared))
            else:
                scales[seg.group] = old
    if not maps:
        return
    after = change.widths(before)
    index = span.index(before, maps)
    entry = planner.open(index.numel())
    tensor = planner.tensor(span.tensor)
    consumer_scale = span.expand(after, scales, 1.0) if growing and span.role == "consumer" else None
    entry.add(tensor, span.dim, ("tensor", span.tensor), consumer_scale)
    p = planner.params.get(span.tensor)
    if planner.optimizer is not None and p is not None and p in planner.optimizer.state:
        old = span.expand(after, {k: 1 - v for k, v in news.items()}, 1.0) if growing else None
        values = planner.optimizer.state[p]
        for key, value in values.items():
            if isinstance(value, torch.Tensor) and value.shape == p.shape:
                entry.add(value, span.dim, ("optim", values, key), old)
    entry.close(index, 0)
    parentless = {k: v for k, v in news.items() if change.groups[k].init in PARENTLESS}
    if growing and span.fill is not None and parentless and span.role == "producer":
        planner.fills.append((span.tensor, span.dim, span.expand(after, parentless, 0.0) > 0, span.fill))


def _assign_results(planner: _Planner, targets, results) -> None:
    saliency, slots = planner.saliency, planner.slots
    for target, result in zip(targets, results):
        if result is None:  # consumed by a later group of the change, which assigns the final value
            continue
        if target[0] == "tensor":
            module, attr, table = slots.get(target[1]) or planner.slot(target[1])
            if table is module._parameters:
                table[attr].data = result  # same Parameter object: the optimizer keeps tracking it
            else:
                _assign(module, attr, result)
        elif target[0] == "optim":  # (the parameter's state dict, the key)
            target[1][target[2]] = result
        else:
            saliency[target[1]] = result


def _has_after_gather(change: GroupChange, kind) -> bool:
    """Whether ``_after_gather`` does anything for this group: the growth rules with a step there."""
    return kind == "grow" and change.init in PARENTLESS and bool(change.new.any())


def _after_gather(model, group, change: GroupChange, kind) -> None:
    """A group's growth-rule steps that follow the gather, once the results of the groups gathered with it are
    assigned. They may touch only the group's producers (``apply_width_change`` orders them by that)."""
    if not _has_after_gather(change, kind):  # only the parentless rules have a step here
        return
    new = change.new.to(model.get_parameter(group.saliency).device, non_blocking=True)
    for qualname in group.ones:
        model.tensor(qualname).data[new] = 1.0
    if change.init == "orthogonal_zero_out":
        weight = model.tensor(group.saliency)
        weight.data[new] = orthogonal_filters(weight.data[~new], int(new.sum()), change.seed)


def _assign(module: nn.Module, attr: str, value: torch.Tensor) -> None:
    current = module._parameters.get(attr)
    if current is not None:
        current.data = value  # same Parameter object: the optimizer keeps tracking it
    else:
        module._buffers[attr] = value

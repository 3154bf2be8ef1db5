"""The batched gather over several index maps: its argument types, their checks, the same arguments built
without checks (``GatherBatch``, for surgery), and the one host-to-device copy.

Shared by the torch twin (:func:`cgap_triton.kernels.reference.gather_channels_groups`) and the Triton launcher
(:mod:`cgap_triton.kernels.gather`). Every check reads host metadata (types, shapes, devices) and, for index maps
and per-slice vectors given on the CPU, their values; values that live on an accelerator are never read here
(that would synchronise the host with the device).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from ._checks import IMPLS, SUPPORTED_DTYPES, _describe, resolve_impl

_CPU = torch.device("cpu")


class GroupOutput(NamedTuple):
    """Output ``position`` of the earlier group ``group`` of the same call, used as a later group's input."""

    group: int
    position: int


class VectorSlice(NamedTuple):
    """Elements ``[start, start + length)`` of the 1-D float32 CPU tensor ``base``, as a per-slice vector (scale or
    std) of a :class:`GatherBatch` entry. The batch stages ``base`` once for all its slices, where a vector per
    entry would be a tensor to make and one more to stage (surgery builds every group's vectors in one array)."""

    base: torch.Tensor
    start: int
    length: int


def host_vector(vector: torch.Tensor | VectorSlice) -> torch.Tensor:
    """``vector`` as a tensor (a :class:`VectorSlice` as a view of its base)."""
    if type(vector) is VectorSlice:
        return vector.base[vector.start : vector.start + vector.length]
    return vector


class GatherGroup(NamedTuple):
    """One index map and the (tensor, dim) pairs it rebuilds: the arguments of one ``gather_channels_many`` call.

    ``tensors`` entries are tensors, or :class:`GroupOutput` references to an earlier group's output. ``index``,
    and each scale or std tensor, may be on the CPU or on the tensors' device.
    """

    tensors: Sequence[torch.Tensor | GroupOutput]
    dims: Sequence[int]
    index: torch.Tensor
    scales: Sequence[torch.Tensor | None] | None = None
    noise_stds: Sequence[float | torch.Tensor] | None = None
    seed: int = 0


@dataclass(slots=True)
class Entry:
    """One checked (tensor, dim) pair of one group."""

    source: torch.Tensor | None  # the tensor read; None when the input is an earlier group's output
    consumes: tuple[int, int] | None  # (group, position) of that earlier output
    dim: int
    shape: tuple[int, ...]  # of the input (an earlier output's shape for a GroupOutput)
    dtype: torch.dtype
    scale: torch.Tensor | VectorSlice | None  # (a VectorSlice only from a GatherBatch)
    std: float | torch.Tensor | VectorSlice
    consumer: tuple[int, int] | None = None  # the later (group, position) that reads this output, if any
    std_of_input: float = 0.0  # when nonzero, the std is also multiplied by this times std(the input read)


@dataclass(slots=True)
class CheckedGroup:
    entries: list[Entry]
    index: torch.Tensor
    seed: int

    @property
    def length(self) -> int:
        return self.index.shape[0]


@dataclass
class CheckedGroups:
    """A validated ``gather_channels_groups`` call, and the CPU data bound for the device."""

    groups: list[CheckedGroup]
    device: torch.device
    host_index: torch.Tensor | None = None  # the index maps given on the CPU, concatenated (int64)
    host_index_groups: list[int] = field(default_factory=list)  # their groups, in that order
    host_index_offsets: list[int] = field(default_factory=list)  # their first element in host_index
    host_vectors: list[torch.Tensor] = field(default_factory=list)  # distinct per-slice vectors given on the CPU
    host_vector_offsets: dict[int, int] = field(default_factory=dict)  # id(vector) -> first element in the float part
    host_vector_numel: int = 0


class GatherBatch:
    """A ``gather_channels_groups`` call built entry by entry by a caller that vouches for its arguments.

    Internal to the package (surgery builds its changes with it); other code calls ``gather_channels_groups``.
    It holds what :func:`check_gather_groups` would return, without the checks: no type, shape, device, dim or
    range check is made, and the caller must give tensors of a supported dtype on one device, dims in
    ``[0, rank)``, one size along the dims of a group, 1-D int64 index maps (on the CPU or the device) and
    per-slice float vectors of the map's length (tensors, or :class:`VectorSlice` of a CPU float32 base whose
    elements the batch stages once). An index outside ``[-1, size)`` reads as -1 in the Triton
    kernel (the torch twin fails as ``index_select`` does), but a vector shorter than its map is read past its
    end. A structural change of a model is such a call: its planner knows every shape, and building the batch
    costs a fraction of checking it.

    One addition to a ``GatherGroup``'s arguments: ``std_of_input``, a float ``c``. When nonzero, the noise std of
    slice j is ``std[j] · c · std(input)``, where ``std(input)`` is the sample standard deviation (as
    ``torch.std``) of the tensor the entry reads, as it is read: an earlier group's output as that group writes
    it. The device computes it (the Triton path sums the input's moments in a launch of its own before the
    gathers that need them): the host never reads it. The input needs two elements or more.

        batch = GatherBatch()
        k = batch.add(weight, 1, scale=old)              # group 0, output k: weight's columns
        batch.close(index0, seed=1)
        batch.add(GroupOutput(0, k), 0, std=new, std_of_input=0.01)
        batch.close(index1, seed=2)                      # group 1: that output's rows, with noise of std
                                                         # 0.01 · std(output k) on the slices where new is 1
        results = batch.run(impl="auto")                 # as gather_channels_groups returns them

    Host cost (``python -m benchmarks.host``, Triton path, launch stubbed; AMD EPYC): a VGG-19 growth step's batch
    (16 groups, 176 tensors, at 1/8 width) runs in 0.54 ms, against 0.90 ms for the checked call on the same
    groups; surgery's whole change, planning and assignment included, takes 0.89 ms.
    """

    __slots__ = ("checked", "_entries", "_ran")

    def __init__(self) -> None:
        self.checked = CheckedGroups([], _CPU)
        self._entries: list[Entry] = []  # of the group being built
        self._ran = False
        self.checked.device = None  # type: ignore[assignment]  # the first tensor's

    def add(
        self,
        tensor: torch.Tensor | GroupOutput,
        dim: int,
        scale: torch.Tensor | VectorSlice | None = None,
        std: float | torch.Tensor | VectorSlice = 0.0,
        std_of_input: float = 0.0,
    ) -> int:
        """Add (``tensor``, ``dim``) to the group being built; returns its position in that group."""
        entries = self._entries
        checked = self.checked
        kept = checked.host_vector_offsets  # (a vector is often the scale of several entries: kept once)
        if scale is not None:
            vector = scale.base if type(scale) is VectorSlice else scale
            if id(vector) not in kept and vector.device.type == "cpu":
                _keep_host_vector(checked, vector)
        if type(std) is not float:
            vector = std.base if type(std) is VectorSlice else std
            if isinstance(vector, torch.Tensor) and id(vector) not in kept and vector.device.type == "cpu":
                _keep_host_vector(checked, vector)
        if type(tensor) is GroupOutput:
            produced = self.entry(*tensor)
            produced.consumer = (len(checked.groups), len(entries))
            shape = self.output_shape(*tensor)
            entries.append(Entry(None, tuple(tensor), dim, shape, produced.dtype, scale, std, None, std_of_input))
        else:
            if checked.device is None:
                checked.device = tensor.device
            entries.append(Entry(tensor, None, dim, tensor.shape, tensor.dtype, scale, std, None, std_of_input))
        return len(entries) - 1

    def close(self, index: torch.Tensor, seed: int = 0) -> int:
        """End the group being built with its index map and noise seed; returns the group's number."""
        self.checked.groups.append(CheckedGroup(self._entries, index, seed))
        self._entries = []
        return len(self.checked.groups) - 1

    def __len__(self) -> int:
        return len(self.checked.groups)

    def entry(self, g: int, k: int) -> Entry:
        return self.checked.groups[g].entries[k]

    def output_shape(self, g: int, k: int) -> tuple[int, ...]:
        """The shape of output ``k`` of group ``g``."""
        group = self.checked.groups[g]
        entry = group.entries[k]
        shape = list(entry.shape)
        shape[entry.dim] = group.index.shape[0]
        return tuple(shape)

    def run(self, impl: str = "auto") -> list[list[torch.Tensor | None]]:
        """The gathers, as :func:`cgap_triton.kernels.gather_channels_groups` returns them (once per batch)."""
        from . import reference  # (which imports this module)

        if self._entries:
            raise ValueError("GatherBatch.run: the last group is not closed (call close(index, seed) first)")
        checked = self.checked
        if checked.device is None:  # no group: only the impl's name is checked
            if impl not in IMPLS:
                raise ValueError(f"impl: expected one of {IMPLS}, got {impl!r}")
            return []
        if self._ran:
            raise ValueError("GatherBatch.run: this batch has run already; build a new one")
        self._ran = True
        _collect_host_indexes(checked)  # (its CPU vectors were kept as they were added)
        if resolve_impl(impl, checked.device) == "torch":
            return reference._gather_groups(checked)
        from .gather import gather_groups_triton

        return gather_groups_triton(checked)


def _name(g: int, arg: str, k: int | None = None) -> str:
    return f"groups[{g}].{arg}" if k is None else f"groups[{g}].{arg}[{k}]"


def _refuse_tensor(name: str, t: object, device: torch.device | None) -> None:
    """Raise the ``ValueError`` that says what is wrong with ``t`` as an input tensor."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor or a GroupOutput, got {_describe(t)}")
    if t.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{name}: expected dtype float32, float16 or bfloat16, got {t.dtype}")
    if t.is_meta:
        raise ValueError(f"{name}: expected a tensor with data (cpu or cuda), got a meta tensor")
    if t.layout is not torch.strided:
        raise ValueError(f"{name}: expected a dense (strided) tensor, got layout {t.layout}")
    raise ValueError(f"{name}: all tensors must be on one device; the first is on {device}, this one on {t.device}")


def _refuse_dim(name: str, dim: object, shape: tuple[int, ...]) -> None:
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise ValueError(f"{name}: expected an int, got {type(dim).__name__}")
    rank = len(shape)
    raise ValueError(f"{name}: expected a dim in [{-rank}, {rank}) for a tensor of shape {tuple(shape)}, got {dim}")


def _check_where(name: str, t: torch.Tensor, device: torch.device) -> bool:
    """A tensor with data on the CPU or on ``device``; returns whether it is on the CPU."""
    if t.is_meta:
        raise ValueError(f"{name}: expected a tensor with data (cpu or cuda), got a meta tensor")
    if t.layout is not torch.strided:
        raise ValueError(f"{name}: expected a dense (strided) tensor, got layout {t.layout}")
    where = t.device
    if where.type == "cpu":
        return True
    if where != device:
        raise ValueError(f"{name}: expected a tensor on the cpu or on {device} (the tensors' device), got {where}")
    return False


def _check_vector(name: str, value: object, length: int, device: torch.device, what: str) -> bool:
    """A 1-D float tensor of ``length`` on the CPU or ``device``; returns whether it is on the CPU."""
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise ValueError(f"{name}: expected {what}, got {_describe(value)}")
    if value.dim() != 1 or value.shape[0] != length:
        raise ValueError(f"{name}: expected shape ({length},) (one entry per index), got {tuple(value.shape)}")
    return _check_where(name, value, device)


def _sequence(name: str, value: object, n: int, what: str) -> Sequence:
    if isinstance(value, torch.Tensor) or not isinstance(value, Sequence) or len(value) != n:
        raise ValueError(f"{name}: expected {what} ({n}), got {_describe(value)}")
    return value


def check_gather_groups(groups: object) -> CheckedGroups:
    """Validate a ``gather_channels_groups`` call; raise ``ValueError`` naming the group and the argument.

    Index maps given on the CPU are range-checked, and std vectors given on the CPU checked for finite values
    >= 0, in one vectorised pass over all groups; those given on the device are checked for type, shape and
    device only. The CPU data bound for the device is collected on the way (see :func:`collect_host_data`).
    """
    if isinstance(groups, torch.Tensor) or not isinstance(groups, Sequence) or isinstance(groups, GatherGroup):
        shown = "one GatherGroup (put it in a list)" if isinstance(groups, GatherGroup) else _describe(groups)
        raise ValueError(f"groups: expected a sequence of GatherGroup, got {shown}")
    checked: list[CheckedGroup] = []
    result = CheckedGroups(checked, _CPU)
    device: torch.device | None = None
    supported, strided, tensor_type = SUPPORTED_DTYPES, torch.strided, torch.Tensor
    vectors: dict[int, int] = {}  # id(vector) -> the length it was checked for
    cpu_stds: list[tuple[int, int, torch.Tensor]] = []
    for g, group in enumerate(groups):
        if isinstance(group, GatherGroup):
            tensors, dims, index, scales, stds, seed = group
        elif isinstance(group, Sequence) and not isinstance(group, str) and 3 <= len(group) <= 6:
            tensors, dims, index, scales, stds, seed = GatherGroup(*group)
        else:
            raise ValueError(
                f"groups[{g}]: expected a GatherGroup (tensors, dims, index, scales, noise_stds, seed), "
                f"got {_describe(group)}"
            )
        if isinstance(tensors, torch.Tensor) or not isinstance(tensors, Sequence) or not tensors:
            raise ValueError(f"{_name(g, 'tensors')}: expected a non-empty sequence, got {_describe(tensors)}")
        n = len(tensors)
        if isinstance(dims, int):
            raise ValueError(f"{_name(g, 'dims')}: expected one dim per tensor ({n}), got {dims!r}")
        dims = _sequence(_name(g, "dims"), dims, n, "one dim per tensor")
        entries, size = [], None
        for k in range(n):
            t, dim = tensors[k], dims[k]
            if isinstance(t, tensor_type):
                if t.dtype not in supported or t.is_meta or t.layout is not strided:
                    _refuse_tensor(_name(g, "tensors", k), t, device)
                if device is None:
                    device = t.device
                elif t.device != device:
                    _refuse_tensor(_name(g, "tensors", k), t, device)
                entry = Entry(t, None, dim, t.shape, t.dtype, None, 0.0)
            elif isinstance(t, GroupOutput):
                entry = _consume(checked, g, k, t)
            else:
                _refuse_tensor(_name(g, "tensors", k), t, device)
            shape = entry.shape
            rank = len(shape)
            if type(dim) is not int or not -rank <= dim < rank:
                _refuse_dim(_name(g, "dims", k), dim, shape)
            if dim < 0:
                dim += rank
            entry.dim = dim
            if size is None:
                size = shape[dim]
            elif shape[dim] != size:
                shown = ", ".join(f"[{i}].shape[{e.dim}]={e.shape[e.dim]}" for i, e in enumerate([*entries, entry]))
                raise ValueError(
                    f"{_name(g, 'tensors')}: one index map needs the same size along each dim; got {shown}"
                )
            entries.append(entry)
        if not isinstance(index, torch.Tensor):
            raise ValueError(f"{_name(g, 'index')}: expected an int64 torch.Tensor, got {type(index).__name__}")
        if index.dtype != torch.int64:
            raise ValueError(f"{_name(g, 'index')}: expected dtype int64, got {index.dtype}")
        if index.dim() != 1:
            raise ValueError(f"{_name(g, 'index')}: expected a 1-D tensor, got shape {tuple(index.shape)}")
        _check_where(_name(g, "index"), index, device)
        length = index.shape[0]
        if scales is not None:
            scales = _sequence(_name(g, "scales"), scales, n, "None or one entry (None or tensor) per tensor")
            for k in range(n):
                scale = scales[k]
                if scale is not None:
                    if vectors.get(id(scale)) != length:
                        what = f"None or a 1-D float tensor of length {length}"
                        if _check_vector(_name(g, "scales", k), scale, length, device, what):
                            _keep_host_vector(result, scale)
                        vectors[id(scale)] = length
                    entries[k].scale = scale
        if stds is not None:
            stds = _sequence(_name(g, "noise_stds"), stds, n, "None or one entry per tensor")
            for k in range(n):
                std = stds[k]
                if isinstance(std, torch.Tensor):
                    if vectors.get(id(std)) != length:
                        what = "a float >= 0 or a 1-D float tensor"
                        if _check_vector(_name(g, "noise_stds", k), std, length, device, what):
                            _keep_host_vector(result, std)
                        vectors[id(std)] = length
                    if std.device.type == "cpu":
                        cpu_stds.append((g, k, std))
                    entries[k].std = std
                elif isinstance(std, bool) or not isinstance(std, (int, float)):
                    raise ValueError(
                        f"{_name(g, 'noise_stds', k)}: expected a float >= 0 or a 1-D float tensor, "
                        f"got {_describe(std)}"
                    )
                elif not 0 <= std < math.inf:  # also rejects NaN
                    raise ValueError(f"{_name(g, 'noise_stds', k)}: expected a float >= 0 and finite, got {std}")
                elif std:
                    entries[k].std = float(std)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
            raise ValueError(f"groups[{g}].seed: expected an int in [0, 2**31), got {seed!r}")
        checked.append(CheckedGroup(entries, index, seed))
    result.device = device or _CPU
    _collect_host_indexes(result)
    _check_host_values(result, cpu_stds)
    return result


def _consume(checked: list[CheckedGroup], g: int, k: int, ref: GroupOutput) -> Entry:
    """The entry reading output ``ref`` of an earlier group; marks that output consumed."""
    earlier, position = ref
    if not (isinstance(earlier, int) and 0 <= earlier < g):
        raise ValueError(f"{_name(g, 'tensors', k)}: {ref} must name an earlier group, in [0, {g})")
    if not (isinstance(position, int) and 0 <= position < len(checked[earlier].entries)):
        raise ValueError(
            f"{_name(g, 'tensors', k)}: {ref}: group {earlier} has {len(checked[earlier].entries)} outputs"
        )
    produced = checked[earlier].entries[position]
    if produced.consumer is not None:
        raise ValueError(
            f"{_name(g, 'tensors', k)}: {ref} is already the input of groups[{produced.consumer[0]}]."
            f"tensors[{produced.consumer[1]}]; each output may be used once"
        )
    produced.consumer = (g, k)
    shape = list(produced.shape)
    shape[produced.dim] = checked[earlier].length
    return Entry(None, (earlier, position), 0, tuple(shape), produced.dtype, None, 0.0)


def _keep_host_vector(checked: CheckedGroups, vector: torch.Tensor) -> None:
    if id(vector) not in checked.host_vector_offsets:
        checked.host_vector_offsets[id(vector)] = checked.host_vector_numel
        checked.host_vectors.append(vector)
        checked.host_vector_numel += vector.shape[0]


def _collect_host_indexes(checked: CheckedGroups) -> None:
    indexes, start = [], 0
    for g, group in enumerate(checked.groups):
        if group.index.device.type == "cpu":
            checked.host_index_groups.append(g)
            checked.host_index_offsets.append(start)
            indexes.append(group.index)
            start += group.length
    if indexes:
        checked.host_index = torch.cat(indexes) if len(indexes) > 1 else indexes[0].contiguous()


def collect_host_data(checked: CheckedGroups) -> None:
    """Collect the index maps and the per-slice vectors given on the CPU (concatenated, vectors deduplicated) for
    the one copy to the device, for arguments checked elsewhere (``gather_channels_many``)."""
    _collect_host_indexes(checked)
    for group in checked.groups:
        for entry in group.entries:
            for vector in (entry.scale, entry.std):
                if isinstance(vector, torch.Tensor) and vector.device.type == "cpu":
                    _keep_host_vector(checked, vector)


def _check_host_values(checked: CheckedGroups, stds: list[tuple[int, int, torch.Tensor]]) -> None:
    """Range-check the index maps and value-check the std vectors given on the CPU, all groups at once."""
    if checked.host_index is not None and checked.host_index.numel():
        groups = [checked.groups[g] for g in checked.host_index_groups]
        sizes = [group.entries[0].shape[group.entries[0].dim] for group in groups]
        # On the CPU by name: a caller's torch.set_default_device must not move host checks to the GPU.
        lengths = torch.tensor([group.length for group in groups], device="cpu")
        bound = torch.repeat_interleave(
            torch.tensor(sizes, device="cpu"), lengths, output_size=checked.host_index.numel()
        )
        if bool(((checked.host_index < -1) | (checked.host_index >= bound)).any()):
            for g, group, size in zip(checked.host_index_groups, groups, sizes):
                low, high = (int(v) for v in torch.aminmax(group.index)) if group.length else (0, 0)
                if low < -1 or high >= size:
                    raise ValueError(
                        f"{_name(g, 'index')}: values must be in [-1, {size}); found {low if low < -1 else high}"
                    )
    if stds:
        values = torch.cat([s for _, _, s in stds]) if len(stds) > 1 else stds[0][2]
        if bool((~(values >= 0) | values.isinf()).any()):  # NaN fails >= 0
            for g, k, std in stds:
                bad = ~(std >= 0) | std.isinf()
                if bool(bad.any()):
                    raise ValueError(
                        f"{_name(g, 'noise_stds', k)}: expected standard deviations >= 0 and finite, "
                        f"found {float(std[bad][0])}"
                    )


class HostLayout(NamedTuple):
    """Where the CPU data of a call lies in its device buffer: ``[index maps (int64) | vectors (float32) | table]``."""

    index_offsets: dict[int, int]  # group -> byte offset of its CPU-given index map
    vector_offsets: dict[int, int]  # id(CPU vector) -> byte offset of its float32 copy
    nbytes: int  # of the index maps and vectors, padded to 8: the byte offset of the table


def host_layout(checked: CheckedGroups) -> HostLayout:
    index_numel = 0 if checked.host_index is None else checked.host_index.numel()
    index_offsets = {g: 8 * o for g, o in zip(checked.host_index_groups, checked.host_index_offsets)}
    floats = 8 * index_numel
    vector_offsets = {key: floats + 4 * o for key, o in checked.host_vector_offsets.items()}
    return HostLayout(index_offsets, vector_offsets, floats + 8 * ((checked.host_vector_numel + 1) // 2))


def send(
    checked: CheckedGroups,
    layout: HostLayout,
    table: torch.Tensor | None = None,
    fix: Callable[[torch.Tensor, int], None] | None = None,
) -> tuple[torch.Tensor, int]:
    """Allocate the call's device buffer, let ``fix(table, buffer address)`` put addresses into the CPU ``table``
    (int64), and fill the buffer with the CPU index maps, vectors and table in one copy, ``non_blocking`` (the
    host does not wait for the device). Returns the buffer (uint8) and the table's byte offset in it."""
    table_bytes = 0 if table is None else 8 * table.numel()
    buffer = torch.empty(layout.nbytes + table_bytes, dtype=torch.uint8, device=checked.device)
    if fix is not None and table is not None:
        fix(table, buffer.data_ptr())
    parts = []
    if checked.host_index is not None and checked.host_index.numel():
        parts.append(checked.host_index.view(torch.uint8))
    if checked.host_vector_numel:
        vectors = checked.host_vectors
        floats = torch.cat(vectors) if len(vectors) > 1 else vectors[0]
        floats = floats.to(torch.float32)
        if checked.host_vector_numel % 2:  # keep the table 8-byte aligned
            floats = torch.cat([floats, floats.new_zeros(1)])
        parts.append(floats.contiguous().view(torch.uint8))
    if table_bytes:
        parts.append(table.view(-1).view(torch.uint8))
    if parts:
        buffer.copy_(torch.cat(parts) if len(parts) > 1 else parts[0], non_blocking=True)
    return buffer, layout.nbytes


def staged_views(checked: CheckedGroups) -> tuple[list[torch.Tensor], dict[int, torch.Tensor]]:
    """For the torch twin: every group's index map, and the CPU-given vectors by id, on the device; the CPU ones
    moved there in one copy (nothing is copied when the device is the CPU)."""
    if checked.device.type == "cpu":
        return [group.index for group in checked.groups], {}
    layout = host_layout(checked)
    buffer, _ = send(checked, layout)
    indexes = []
    for g, group in enumerate(checked.groups):
        if g in layout.index_offsets:
            start = layout.index_offsets[g]
            indexes.append(buffer[start : start + 8 * group.length].view(torch.int64))
        else:
            indexes.append(group.index)
    vectors = {}
    for vector in checked.host_vectors:
        start = layout.vector_offsets[id(vector)]
        vectors[id(vector)] = buffer[start : start + 4 * vector.shape[0]].view(torch.float32)
    return indexes, vectors

"""Torch-Pruning adapter: importance scores from one ``channel_stats`` launch, optimizer state kept across pruning.

:class:`KernelImportance` is Torch-Pruning's ``GroupMagnitudeImportance`` with only its per-layer scoring
replaced. Torch-Pruning slices and reduces every layer of every group in Python, group by group; this one,
at the first group of a pruning step, reads every conv/linear weight of the model twice (dim 0: the filters a
layer produces, dim 1: the columns a layer consumes, read in place) and every norm weight once, all in one
:func:`cgap_triton.kernels.channel_stats` launch, and takes each layer's scores from those per-channel sums.
Which items of a group count, their reduction and the normalizer are Torch-Pruning's own. The criteria:

- ``"l1"``: Σ|w| per channel (``GroupMagnitudeImportance(p=1)``), ``"l2"``: Σw² (its ``p=2``);
- ``"taylor"``: Σ|w·∂L/∂w| (``GroupTaylorImportance``), BatchNorm γ included (Torch-Pruning 1.6 skips it),
  accumulated over as many batches as :meth:`KernelImportance.accumulate` is called for, as a sum or an EMA
  fused into the statistics kernel. Without accumulation it scores the gradients present, like Torch-Pruning.

:meth:`KernelImportance.new_step` starts a pruning step (fresh statistics); :func:`prune_step` calls it.
:func:`record_pruning` notes, while Torch-Pruning prunes, which slices of each parameter it keeps, and
:func:`prune_step` uses that to carry the optimizer over (:func:`cgap_triton.integrations.optim.carry_optimizer_state`).

Needs the optional ``torch-pruning`` package (``pip install 'cgap-triton[torch-pruning]'``).
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

try:
    import torch_pruning as tp
    from torch_pruning.pruner import function
    from torch_pruning.pruner.function import BasePruningFunc
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "cgap_triton.integrations.torch_pruning needs Torch-Pruning; install it with "
        "`pip install 'cgap-triton[torch-pruning]'` (or `pip install torch-pruning`)"
    ) from error

from cgap_triton.integrations.optim import ParameterSlice, carry_optimizer_state
from cgap_triton.kernels import channel_stats

__all__ = ["KernelImportance", "PruningRecord", "prune_step", "record_pruning"]

CRITERIA = ("l1", "l2", "taylor")
GROUP_REDUCTIONS = ("sum", "mean", "max", "prod", "first", "gate")
NORMALIZERS = ("sum", "mean", "max", "standarization", "gaussian", "lamp", "sentinel_<q>")
ACCUMULATIONS = ("sum", "ema")
DEFAULT_TARGET_TYPES = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.LayerNorm)
_COLUMN = {"l1": 0, "l2": 1, "taylor": 3}  # channel_stats columns: l1, l2sq, wg, wg_abs
_WG = 2


@dataclass(frozen=True)
class _Entry:
    """One row set of the launch: the channels of ``module.weight`` along ``dim``."""

    module: nn.Module
    weight: torch.Tensor
    dim: int


class KernelImportance(tp.importance.GroupMagnitudeImportance):
    """Torch-Pruning's ``GroupMagnitudeImportance`` with its per-layer scores read from one ``channel_stats`` launch.

    Args:
        criterion: "l1" (Σ|w|, Torch-Pruning's p=1), "l2" (Σw², its p=2) or "taylor" (Σ|w·g|, or |Σw·g| with
            ``multivariable``).
        group_reduction: how the items of a group combine, Torch-Pruning's own ``_reduce``: "mean" (sum over the
            counted items, then divided by their number), "sum", "max", "prod", "first" or "gate".
        normalizer: None, a callable, or "mean", "sum", "max", "standarization", "gaussian", "lamp",
            "sentinel_<q>" (divide by the q-quantile score): Torch-Pruning's own ``_normalize``.
        accumulation: for "taylor", how :meth:`accumulate` combines batches: "sum" or "ema".
        momentum: the EMA's weight of the past, in [0, 1).
        multivariable: for "taylor", score |Σ w·g| per channel instead of Σ |w·g| (Torch-Pruning's option).
        target_types: the layer types that count, Torch-Pruning's default.
        impl: kernel implementation, "auto", "triton" or "torch" (see :mod:`cgap_triton.kernels`).

    Only the per-layer scoring is this class's own (:meth:`_layer_importance`). The walk over a group is
    ``GroupMagnitudeImportance.__call__``'s, item for item: an item counts when its layer is of ``target_types``
    and its pruning function is one that function dispatches on — a conv/linear pruned on its outputs (its
    filters) or its inputs (its columns, repeated per group for grouped convs), a BatchNorm or LayerNorm with
    affine weights (γ). The reduction over the items and the normalizer are the inherited ``_reduce`` and
    ``_normalize``. So a depthwise convolution, whose items carry Torch-Pruning's depthwise pruning functions,
    is not counted, as in Torch-Pruning; with "taylor", BatchNorm is counted (Torch-Pruning 1.6's
    ``GroupTaylorImportance`` tests for the GroupNorm function there and so skips it). Biases are not counted.

    ``__call__(group)`` returns one float32 score per channel of the group, or None when no item counts.

    Statistics are computed once per pruning step, at the first group scored, and reused for the other groups.
    :meth:`new_step` starts a step (:func:`prune_step` calls it); without it, they are recomputed only when a
    weight (or, for "taylor", a gradient) has been replaced, reshaped or changed through autograd-visible
    in-place ops (an optimizer step, ``copy_`` under ``no_grad``). Edits through ``.data`` are invisible to
    that check: call :meth:`new_step` after them.
    """

    def __init__(
        self,
        criterion: str = "l1",
        group_reduction: str = "mean",
        normalizer: str | Callable[[torch.Tensor], torch.Tensor] | None = "mean",
        *,
        accumulation: str = "sum",
        momentum: float = 0.9,
        multivariable: bool = False,
        target_types: Sequence[type] = DEFAULT_TARGET_TYPES,
        impl: str = "auto",
    ) -> None:
        if criterion not in CRITERIA:
            raise ValueError(f"criterion: expected one of {CRITERIA}, got {criterion!r}")
        if group_reduction not in GROUP_REDUCTIONS:
            raise ValueError(f"group_reduction: expected one of {GROUP_REDUCTIONS}, got {group_reduction!r}")
        if not (normalizer is None or callable(normalizer) or _known_normalizer(normalizer)):
            raise ValueError(f"normalizer: expected None, a callable or one of {NORMALIZERS}, got {normalizer!r}")
        if accumulation not in ACCUMULATIONS:
            raise ValueError(f"accumulation: expected one of {ACCUMULATIONS}, got {accumulation!r}")
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
            raise ValueError(f"momentum: expected a float in [0, 1), got {momentum!r}")
        super().__init__(
            p=2 if criterion == "l2" else 1,
            group_reduction=group_reduction,
            normalizer=normalizer,
            bias=False,
            target_types=tuple(target_types),
        )
        self.criterion = criterion
        self.accumulation = accumulation
        self.momentum = float(momentum)
        self.multivariable = multivariable
        self.impl = impl
        self.launches = 0  # channel_stats calls so far: one per pruning step (and one per accumulated batch)
        self._stats: dict[tuple[int, int], torch.Tensor] = {}
        self._stats_key: tuple = ()
        self._sums: dict[tuple[int, int], torch.Tensor] = {}
        self._sums_key: tuple = ()
        self._batches = 0
        self._scores_of_sums: dict[tuple[int, int], torch.Tensor] | None = None

    # ------------------------------------------------------------------ steps and Taylor accumulation
    def new_step(self) -> None:
        """Start a pruning step: the next group scored recomputes the statistics from the weights as they are.

        Call it before each ``pruner.step()`` (:func:`prune_step` does); the Taylor accumulation is kept.
        """
        self._stats, self._stats_key = {}, ()

    @torch.no_grad()
    def accumulate(self, model: nn.Module) -> None:
        """Fold the gradients of the last backward into the Taylor scores (call it after each backward).

        One ``channel_stats`` launch for the whole model, with the running sum or EMA fused into the kernel.
        A model whose parameters changed (pruned) since the previous call starts a new accumulation.
        """
        if self.criterion != "taylor":
            raise ValueError(f"accumulate: only the 'taylor' criterion uses gradients; this one is {self.criterion!r}")
        entries = self._entries(model, with_grads=True)
        if not entries:
            raise ValueError("accumulate: no weight of the target types has a gradient; call loss.backward() first")
        key = _identity_key(entries, versions=False)
        if not _same_key(key, self._sums_key):
            self._sums = {
                (id(e.module), e.dim): torch.zeros(e.weight.shape[e.dim], 4, device=e.weight.device) for e in entries
            }
            self._sums_key, self._batches = key, 0
        self._batches += 1
        self._scores_of_sums = None
        if self._batches == 1:
            momentum = None  # the first batch overwrites the zeros
        elif self.accumulation == "ema":
            momentum = self.momentum
        else:
            momentum = (self._batches - 1) / self._batches  # a running mean, read back times the batch count
        out = [self._sums[(id(e.module), e.dim)] for e in entries]
        grads = [e.weight.grad for e in entries]
        channel_stats(
            [e.weight for e in entries], grads, out=out, momentum=momentum, dim=[e.dim for e in entries], impl=self.impl
        )
        self.launches += 1

    def reset(self) -> None:
        """Forget the accumulated Taylor scores and the cached statistics."""
        self._sums, self._sums_key, self._batches, self._scores_of_sums = {}, (), 0, None
        self.new_step()

    @property
    def batches(self) -> int:
        """Batches folded into the Taylor scores since the last reset or structural change."""
        return self._batches

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        graph = getattr(group, "_DG", None)
        if graph is None:
            raise ValueError("group: expected a group made by a Torch-Pruning DependencyGraph (its _DG is None)")
        stats = self._statistics(graph.model)
        group_imp, group_idxs = [], []
        for i, (dep, idxs) in enumerate(group):  # GroupMagnitudeImportance.__call__'s walk
            layer, root_idxs = dep.layer, group[i].root_idxs
            if not isinstance(layer, tuple(self.target_types)) or any(r is None for r in root_idxs):
                continue  # the second: items _reduce skips, not scored (a frozen layer needs no gradient)
            local = self._layer_importance(layer, dep.pruning_fn, idxs, stats)
            if local is not None:
                group_imp.append(local)
                group_idxs.append(root_idxs)
        if not group_imp:
            return None
        return self._normalize(self._reduce(group_imp, group_idxs), self.normalizer)

    def _layer_importance(self, layer: nn.Module, prune_fn, idxs, stats) -> torch.Tensor | None:
        """The scores of the channels ``idxs`` of ``layer``, or None where GroupMagnitudeImportance counts nothing.

        The dispatch is GroupMagnitudeImportance's, on Torch-Pruning's own pruning functions; the numbers are
        rows of this step's ``channel_stats`` results instead of slices reduced in Python.
        """
        transposed = bool(getattr(layer, "transposed", False))
        if prune_fn in (function.prune_conv_out_channels, function.prune_linear_out_channels):
            dim, repeat = (1 if transposed else 0), 1
        elif prune_fn in (function.prune_conv_in_channels, function.prune_linear_in_channels):
            dim, repeat = (0 if transposed else 1), 1
            if prune_fn == function.prune_conv_in_channels and layer.groups != 1:
                if layer.groups == layer.in_channels:
                    # Torch-Pruning reaches this only for a channel-multiplier conv (a plain depthwise conv has
                    # its own pruning function) and indexes past its single column there; count nothing.
                    return None
                repeat = layer.groups  # the columns cover in_channels / groups: Torch-Pruning repeats them
        elif prune_fn == function.prune_batchnorm_out_channels:
            if not layer.affine:
                return None
            dim, repeat = 0, 1
        elif prune_fn == function.prune_layernorm_out_channels:
            if not layer.elementwise_affine:
                return None
            dim, repeat = 0, 1
        else:
            return None
        layer_stats = stats.get((id(layer), dim))
        if layer_stats is None:
            raise ValueError(
                f"{type(layer).__name__} in the group has no statistics: for 'taylor', its weight needs a "
                "gradient (run loss.backward() first)"
            )
        local = self._column(layer_stats)
        if repeat > 1:
            local = local.repeat(repeat)
        return local[torch.as_tensor(idxs, dtype=torch.int64, device=local.device)]

    def _column(self, stats: torch.Tensor) -> torch.Tensor:
        if self.criterion == "taylor" and self.multivariable:
            return stats[:, _WG].abs()
        return stats[:, _COLUMN[self.criterion]]

    def _statistics(self, model) -> dict[tuple[int, int], torch.Tensor]:
        """Per-(layer, dim) statistics for this step: one launch at the first group, reused for the rest."""
        taylor = self.criterion == "taylor"
        entries = self._entries(model, with_grads=taylor)
        if taylor and self._batches:
            if _same_key(_identity_key(entries, versions=False), self._sums_key):
                if self._scores_of_sums is None:
                    # The kernel keeps a running mean; the sum is that mean times the batch count.
                    scale = self._batches if self.accumulation == "sum" else 1
                    self._scores_of_sums = {key: value * scale for key, value in self._sums.items()}
                return self._scores_of_sums
            warnings.warn(
                f"KernelImportance: the Taylor scores accumulated over {self._batches} batch(es) belong to a model "
                "whose parameters have changed since (pruned); scoring the current gradients instead. Call "
                "accumulate() after each backward to score the pruned model.",
                stacklevel=3,
            )
            self._sums, self._sums_key, self._batches, self._scores_of_sums = {}, (), 0, None
        # Within a step nothing changes; a stale cache (weights pruned, trained, re-graded) is caught here too.
        key = _identity_key(entries, versions=True, grads=taylor)
        if not self._stats or not _same_key(key, self._stats_key):
            self._stats, self._stats_key = self._launch(entries, taylor), key
        return self._stats

    def _launch(self, entries: list[_Entry], taylor: bool) -> dict[tuple[int, int], torch.Tensor]:
        if not entries:
            return {}
        grads = [e.weight.grad for e in entries] if taylor else None
        results = channel_stats(
            [e.weight for e in entries], grads, dim=[e.dim for e in entries], impl=self.impl
        )  # the weights themselves, consumer columns through dim=1: nothing is copied
        self.launches += 1
        return {(id(e.module), e.dim): r for e, r in zip(entries, results)}

    def _entries(self, model, *, with_grads: bool) -> list[_Entry]:
        entries = []
        for module in model.modules():
            if not isinstance(module, self.target_types):
                continue
            weight = getattr(module, "weight", None)
            if not isinstance(weight, torch.Tensor) or weight.numel() == 0:
                continue
            if with_grads and weight.grad is None:
                continue  # frozen or unused: no Taylor score, an error only if a group asks for it
            if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
                out_dim = 1 if getattr(module, "transposed", False) else 0
                entries += [_Entry(module, weight, out_dim), _Entry(module, weight, 1 - out_dim)]
            elif weight.dim() == 1:
                entries.append(_Entry(module, weight, 0))
        return entries


def _identity_key(entries: list[_Entry], *, versions: bool, grads: bool = False) -> tuple:
    """What the cached statistics depend on: each weight object (weakly held), its shape, dim and versions."""
    key = []
    for e in entries:
        item = [weakref.ref(e.weight), tuple(e.weight.shape), e.dim]
        if versions:
            item += [e.weight._version, e.weight.data_ptr()]
            if grads:
                item += [weakref.ref(e.weight.grad), e.weight.grad._version]
        key.append(tuple(item))
    return tuple(key)


def _same_key(a: tuple, b: tuple) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if len(x) != len(y):
            return False
        for u, v in zip(x, y):
            if isinstance(u, weakref.ref):
                if not isinstance(v, weakref.ref) or u() is None or u() is not v():
                    return False
            elif u != v:
                return False
    return True


def _known_normalizer(name: object) -> bool:
    if not isinstance(name, str):
        return False
    if name.startswith("sentinel_"):
        try:
            return 0 <= float(name.split("_", 1)[1]) < 1
        except ValueError:
            return False
    return name in NORMALIZERS


# ---------------------------------------------------------------------- optimizer state across pruning
class PruningRecord:
    """The parameters Torch-Pruning replaced while recording: live parameter → :class:`ParameterSlice`."""

    def __init__(self) -> None:
        self._slices: dict[int, tuple[torch.nn.Parameter, ParameterSlice]] = {}

    @property
    def slices(self) -> dict[torch.nn.Parameter, ParameterSlice]:
        return {live: record for live, record in self._slices.values()}

    def __len__(self) -> int:
        return len(self._slices)

    def _add(self, old: torch.nn.Parameter, new: torch.nn.Parameter, dim: int, keep: Sequence[int]) -> None:
        # A parameter pruned twice in one step (a conv's outputs, then its inputs) chains to its first original.
        previous = self._slices.pop(id(old), None)
        original, cuts = (previous[1].original, previous[1].cuts) if previous else (old, ())
        kept = torch.as_tensor(list(keep), dtype=torch.int64)
        self._slices[id(new)] = (new, ParameterSlice(original, (*cuts, (dim % old.dim(), kept))))


@contextlib.contextmanager
def record_pruning(pruner_or_graph) -> Iterator[PruningRecord]:
    """Record which slices of each parameter survive the pruning done inside the ``with`` block.

    Torch-Pruning has no pruning hooks, but every layer pruner it ships (conv, linear, norms, embedding,
    attention, LSTM, unwrapped parameters) replaces a parameter through one method,
    ``BasePruningFunc._prune_parameter_and_grad(weight, keep_idxs, dim)``: the one place where the old
    parameter, the kept indices and the dim are all known. Inside the block that method of the graph's
    pruners is wrapped (on those instances only, restored on exit) to note them.

    Args:
        pruner_or_graph: a Torch-Pruning pruner (``tp.pruner.BasePruner`` / ``MetaPruner``) or its
            ``DependencyGraph``.
    """
    graph = getattr(pruner_or_graph, "DG", pruner_or_graph)
    if not isinstance(graph, tp.DependencyGraph):
        raise ValueError(
            f"pruner_or_graph: expected a Torch-Pruning pruner or DependencyGraph, got {type(pruner_or_graph).__name__}"
        )
    record = PruningRecord()
    layer_pruners = {
        id(p): p
        for p in [*graph.REGISTERED_PRUNERS.values(), *graph.CUSTOMIZED_PRUNERS.values()]
        if isinstance(p, BasePruningFunc)
    }
    restore = []
    for layer_pruner in layer_pruners.values():
        shadowed = layer_pruner.__dict__.get("_prune_parameter_and_grad")
        restore.append((layer_pruner, shadowed))
        layer_pruner._prune_parameter_and_grad = _recording(layer_pruner._prune_parameter_and_grad, record)
    try:
        yield record
    finally:
        for layer_pruner, shadowed in restore:
            if shadowed is None:
                del layer_pruner._prune_parameter_and_grad
            else:
                layer_pruner._prune_parameter_and_grad = shadowed


def _recording(prune_parameter: Callable, record: PruningRecord) -> Callable:
    def recorded(weight, keep_idxs, pruning_dim):
        pruned = prune_parameter(weight, keep_idxs, pruning_dim)
        record._add(weight, pruned, pruning_dim, keep_idxs)
        return pruned

    return recorded


def prune_step(pruner, optimizer: torch.optim.Optimizer | None = None, *, impl: str = "auto") -> PruningRecord:
    """``pruner.step()``, then the optimizer re-pointed at the pruned parameters with its state cut to match.

    A :class:`KernelImportance` of the pruner is told first that a step starts (:meth:`KernelImportance.new_step`).
    Every kept channel keeps its momentum (and Adam moments, ...), so training continues where it was.
    Returns the :class:`PruningRecord` of the step.
    """
    if isinstance(pruner.importance, KernelImportance):
        pruner.importance.new_step()
    with record_pruning(pruner) as record:
        pruner.step()
    if optimizer is not None:
        carry_optimizer_state(optimizer, record.slices, model=pruner.model, impl=impl)
    return record

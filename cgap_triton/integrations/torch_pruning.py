"""Torch-Pruning adapter: importance scores from one ``channel_stats`` launch, optimizer state kept across pruning.

:class:`KernelImportance` is a Torch-Pruning importance (a callable ``group -> scores``). Torch-Pruning's own
estimators slice and reduce every layer of every group in Python, group by group; this one, when the pruner
asks for the first group of a step, reads every conv/linear weight of the model twice (dim 0: the filters
a layer produces, dim 1: the columns a layer consumes, read in place) and every norm weight once, all in one
:func:`cgap_triton.kernels.channel_stats` launch, then assembles each group from those per-channel sums. The
criteria, with the reductions and normalizers named and computed as in ``GroupMagnitudeImportance``:

- ``"l1"``: Σ|w| per channel (``GroupMagnitudeImportance(p=1)``), ``"l2"``: Σw² (its ``p=2``);
- ``"taylor"``: Σ|w·∂L/∂w| (``GroupTaylorImportance``), BatchNorm γ included (Torch-Pruning 1.6 skips it),
  accumulated over as many batches as :meth:`KernelImportance.accumulate` is called for, as a sum or an EMA
  fused into the statistics kernel. Without accumulation it scores the gradients present, like Torch-Pruning.

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


class KernelImportance(tp.importance.Importance):
    """Torch-Pruning importance computed by the ``channel_stats`` kernel.

    Args:
        criterion: "l1" (Σ|w|), "l2" (Σw², Torch-Pruning's p=2) or "taylor" (Σ|w·g|, or |Σw·g| with
            ``multivariable``).
        group_reduction: how the items of a group combine, as in Torch-Pruning: "mean" (sum over the counted
            items, then divided by their number), "sum", "max", "prod", "first" or "gate".
        normalizer: None, a callable, or "mean", "sum", "max", "standarization", "gaussian", "lamp",
            "sentinel_<q>" (divide by the q-quantile score), as in Torch-Pruning.
        accumulation: for "taylor", how :meth:`accumulate` combines batches: "sum" or "ema".
        momentum: the EMA's weight of the past, in [0, 1).
        multivariable: for "taylor", score |Σ w·g| per channel instead of Σ |w·g| (Torch-Pruning's option).
        target_types: the layer types that count, Torch-Pruning's default; conv/linear weights count along their
            filters (dim 0, dim 1 if transposed) when a group prunes outputs and along their columns when it
            prunes inputs, and 1-D norm weights (BatchNorm and LayerNorm γ) count when it prunes outputs.
        impl: kernel implementation, "auto", "triton" or "torch" (see :mod:`cgap_triton.kernels`).

    ``__call__(group)`` returns one float32 score per root channel of the group (``len(group[0].idxs)``), or
    None when no item of the group has weights of ``target_types``. Biases are not counted. A depthwise
    convolution counts through its filters only (its input side is the same weights).
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
        self.criterion = criterion
        self.group_reduction = group_reduction
        self.normalizer = normalizer
        self.accumulation = accumulation
        self.momentum = float(momentum)
        self.multivariable = multivariable
        self.target_types = tuple(target_types)
        self.impl = impl
        self.launches = 0  # channel_stats calls so far: one per pruning step (and one per accumulated batch)
        self._stats: dict[tuple[int, int], torch.Tensor] = {}
        self._stats_key: tuple = ()
        self._scored_roots: set[tuple[int, object]] = set()
        self._sums: dict[tuple[int, int], torch.Tensor] = {}
        self._sums_key: tuple = ()
        self._batches = 0
        self._scores_of_sums: dict[tuple[int, int], torch.Tensor] | None = None

    # ------------------------------------------------------------------ Taylor accumulation
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
        self._stats, self._stats_key, self._scored_roots = {}, (), set()

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
        stats = self._statistics(graph.model, group)
        root_count = len(group[0].idxs)
        scores, roots = [], []
        for item in group:
            dep, idxs, root_idxs = item.dep, item.idxs, item.root_idxs
            layer = dep.target.module
            if not isinstance(layer, self.target_types) or any(r is None for r in root_idxs):
                continue
            dim, repeat = _item_dim(layer, dep.handler, graph)
            if dim is None:
                continue
            channel_stats_of_layer = stats.get((id(layer), dim))
            if channel_stats_of_layer is None:
                raise ValueError(
                    f"{type(layer).__name__} in the group has no statistics: for 'taylor', its weight needs a "
                    "gradient (run loss.backward() first)"
                )
            local = self._column(channel_stats_of_layer)
            if repeat > 1:
                local = local.repeat(repeat)
            index = torch.as_tensor(idxs, dtype=torch.int64, device=local.device)
            scores.append(local[index])
            roots.append(torch.as_tensor(root_idxs, dtype=torch.int64, device=local.device))
        if not scores:
            return None
        return _normalize(_reduce(scores, roots, root_count, self.group_reduction), self.normalizer)

    def _column(self, stats: torch.Tensor) -> torch.Tensor:
        if self.criterion == "taylor" and self.multivariable:
            return stats[:, _WG].abs()
        return stats[:, _COLUMN[self.criterion]]

    def _statistics(self, model, group) -> dict[tuple[int, int], torch.Tensor]:
        """Per-(layer, dim) statistics for this step: one launch at the first group, cached for the rest."""
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
        # A root scored twice means a new pass over the groups (a new step): recompute even if nothing
        # visible changed, since in-place edits through .data do not bump tensor versions.
        root = (id(group[0].dep.target.module), group[0].dep.handler)
        key = _identity_key(entries, versions=True, grads=taylor)
        if not _same_key(key, self._stats_key) or root in self._scored_roots or not self._stats:
            self._stats, self._stats_key, self._scored_roots = self._launch(entries, taylor), key, set()
        self._scored_roots.add(root)
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


def _item_dim(layer: nn.Module, handler, graph) -> tuple[int | None, int]:
    """(dim of ``layer.weight`` whose channels the item prunes, repeat factor for grouped convs) or (None, 0)."""
    is_out = graph.is_out_channel_pruning_fn(handler)
    if isinstance(layer, (nn.modules.conv._ConvNd, nn.Linear)):
        transposed = getattr(layer, "transposed", False)
        if is_out:
            return (1 if transposed else 0), 1
        if not graph.is_in_channel_pruning_fn(handler):
            return None, 0
        groups = getattr(layer, "groups", 1)
        if groups > 1 and groups == layer.in_channels:
            return None, 0  # depthwise: the same weights already count through the filters
        # Grouped convs: weight columns cover in_channels / groups; Torch-Pruning repeats them per group.
        return (0 if transposed else 1), groups
    weight = getattr(layer, "weight", None)
    if is_out and isinstance(weight, torch.Tensor) and weight.dim() == 1:
        return 0, 1
    return None, 0


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


def _reduce(scores: list[torch.Tensor], roots: list[torch.Tensor], length: int, reduction: str) -> torch.Tensor:
    """Torch-Pruning's group reduction: item scores land on their root channels (scatter over root indices)."""
    device = scores[0].device
    if reduction == "prod":
        reduced = torch.ones(length, dtype=torch.float32, device=device)
    elif reduction == "max":
        reduced = torch.full((length,), -99999.0, dtype=torch.float32, device=device)  # Torch-Pruning's floor
    else:
        reduced = torch.zeros(length, dtype=torch.float32, device=device)
    for i, (score, root) in enumerate(zip(scores, roots)):
        score = score.float()
        if reduction in ("sum", "mean"):
            reduced.scatter_add_(0, root, score)
        elif reduction == "max":
            reduced.scatter_(0, root, torch.maximum(reduced.index_select(0, root), score))
        elif reduction == "prod":
            reduced.scatter_(0, root, reduced.index_select(0, root) * score)
        elif (reduction == "first" and i == 0) or (reduction == "gate" and i == len(scores) - 1):
            reduced.scatter_(0, root, score)
    if reduction == "mean":
        reduced /= len(scores)
    return reduced


def _normalize(scores: torch.Tensor, normalizer) -> torch.Tensor:
    """Torch-Pruning's normalizers, with its epsilons."""
    if normalizer is None:
        return scores
    if callable(normalizer):
        return normalizer(scores)
    if normalizer == "sum":
        return scores / scores.sum()
    if normalizer == "mean":
        return scores / scores.mean()
    if normalizer == "max":
        return scores / scores.max()
    if normalizer == "standarization":
        return (scores - scores.min()) / (scores.max() - scores.min() + 1e-8)
    if normalizer == "gaussian":
        return (scores - scores.mean()) / (scores.std() + 1e-8)
    if normalizer == "lamp":
        return _lamp(scores)
    position = int(float(normalizer.split("_", 1)[1]) * len(scores))  # sentinel_<q>
    return scores / (scores[torch.argsort(scores)[position]] + 1e-8)


def _lamp(scores: torch.Tensor) -> torch.Tensor:
    """LAMP: each score over the sum of the scores not smaller than it."""
    ordered, order = scores.sort()
    larger_or_equal = scores.sum() - torch.cat([ordered.new_zeros(1), ordered.cumsum(0)[:-1]])
    result = torch.empty_like(scores)
    result[order] = ordered / larger_or_equal
    return result


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

    Every kept channel keeps its momentum (and Adam moments, ...), so training continues where it was.
    Returns the :class:`PruningRecord` of the step.
    """
    with record_pruning(pruner) as record:
        pruner.step()
    if optimizer is not None:
        carry_optimizer_state(optimizer, record.slices, model=pruner.model, impl=impl)
    return record

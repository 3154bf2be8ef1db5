"""GPU kernels for structural training: per-channel statistics and channel gather/scatter.

Public API (each with a pure-torch twin of the same signature in ``cgap_triton.kernels.reference``):

- :func:`channel_stats` — per-channel ``l1 = Σ|w|``, ``l2sq = Σw²``, ``wg = Σw·g``, ``wg_abs = Σ|w·g|``
  for a whole sequence of tensors in one launch, float32 accumulation, optional fused EMA.
- :class:`ChannelStatsPlan` — the same call prepared once for tensors that keep their addresses (a training
  loop's parameters, gradients and statistics buffers): ``plan.run(momentum)`` per step only launches.
- :func:`gather_channels` — rebuild a tensor along one dim through an index map (``-1`` = zeros), with an
  optional per-slice scale and Gaussian noise: the primitive of growing and pruning channels.
- :func:`gather_channels_many` — one index map applied to many (tensor, dim) pairs in one launch.
- :func:`gather_channels_groups` — many index maps (:class:`GatherGroup`: one ``gather_channels_many`` call each,
  a later one may take an earlier one's output, :class:`GroupOutput`) in one launch per dtype: a whole structural
  change of a model, with no host-device synchronisation.

``impl`` selects the implementation: ``"auto"`` (Triton for CUDA tensors, the torch twin for CPU
tensors), ``"triton"`` (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``) or ``"torch"``.
This package imports only torch (and triton and numpy when a Triton path runs): it works without triton.
"""

from __future__ import annotations

import operator
import weakref
from collections.abc import Sequence

import torch

from . import reference
from ._checks import IMPLS, check_channel_stats_args, check_gather_args, check_momentum, resolve_impl
from ._groups import GatherGroup, GroupOutput, check_gather_groups

__all__ = [
    "ChannelStatsPlan",
    "GatherGroup",
    "GroupOutput",
    "channel_stats",
    "gather_channels",
    "gather_channels_groups",
    "gather_channels_many",
    "reference",
]


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

    Host cost: every argument is checked on every call (``out`` overlap included) and the descriptor table looked
    up in its cache: 100 µs for VGG-19's 16 conv weights with gradients and ``out``, 270 µs for ResNet-110's 54
    (Triton path, kernel launch replaced by a no-op, ``python -m benchmarks.host``; AMD EPYC, 2 cores). A training
    loop that calls it every step should prepare a :class:`ChannelStatsPlan` instead (under 2 µs a run).
    """
    weights, grads, out, momentum, dims = check_channel_stats_args(weights, grads, out, momentum, dim)
    if resolve_impl(impl, weights[0].device) == "torch":
        return reference.channel_stats(weights, grads, out=out, momentum=momentum, dim=dims)
    from .stats import channel_stats_triton

    return channel_stats_triton(weights, grads, out=out, momentum=momentum, dims=dims)


_data_ptr = torch.Tensor.data_ptr
_shape = operator.attrgetter("shape")


class ChannelStatsPlan:
    """:func:`channel_stats` prepared once for fixed tensors; :meth:`run` per step only launches.

    The construction does all the work that depends only on the tensors' storage, addresses, shapes, strides
    and dtypes: every check of :func:`channel_stats` (same ``ValueError`` messages, ``out`` overlap included),
    the choice of implementation, and on the Triton path the dtype groups, block sizes and descriptor tables,
    copied to the device once. :meth:`run` then launches (Triton: no host-to-device copy, no device sync) or
    computes (torch twin: the twin's arithmetic on the pre-checked lists and dims), writing into ``out``.

    A plan is bound to its tensors' storage, addresses and shapes, not to their values: values may change
    freely between runs (an optimizer step, a new backward into the same gradient buffers), and each run reads
    the current ones. After a tensor is replaced, reallocated or reshaped (``p.grad = None`` and a new backward,
    ``p.data = new``, a new ``out`` buffer) the plan must be rebuilt; :meth:`matches` is the cheap test for that.

    Memory: the plan holds the storage of its weights and ``out`` (through ``p.data = new`` too), so a stale plan
    that is run anyway reads and writes only memory it owns, never freed memory. Its gradients it holds weakly,
    so that ``p.grad = None`` or ``zero_grad(set_to_none=True)`` frees them as usual and a new gradient may take
    the old address; a plan one of whose gradients was freed no longer matches and refuses to run
    (``RuntimeError``). Gradients freed every step (``set_to_none=True``) thus mean a new plan every step, its
    table from the cache when they land on the old addresses: keep them in place (``set_to_none=False``).

    Host cost, Triton path, kernel launch replaced by a no-op (``python -m benchmarks.host``; AMD EPYC, 2 cores,
    torch 2.14, median): construction 190 µs for VGG-19's 16 conv weights with gradients and ``out``, 540 µs for
    ResNet-110's 54 (once per structural change; tables built, not taken from the cache); :meth:`run` 1.7 µs for
    either; :meth:`matches` 6 µs and 19 µs. A whole ``SaliencyTracker.update`` (check and run): 12 µs and 27 µs.
    Triton's own launch overhead comes on top of ``run``.

    Args:
        weights, grads, dim, impl: as for :func:`channel_stats`.
        out: one float32 ``[C_i, 4]`` tensor per weight (required: a plan writes its results in place).
    """

    def __init__(
        self,
        weights: Sequence[torch.Tensor],
        grads: Sequence[torch.Tensor] | None = None,
        *,
        out: Sequence[torch.Tensor],
        dim: int | Sequence[int] = 0,
        impl: str = "auto",
    ):
        if out is None:
            raise ValueError("out: expected one float32 [C_i, 4] tensor per weight (a plan writes in place), got None")
        weights, grads, out, _, dims = check_channel_stats_args(weights, grads, out, None, dim)
        self.impl = resolve_impl(impl, weights[0].device)
        self._weights, self._out, self._dims = tuple(weights), tuple(out), dims
        # Detached aliases of the weights' and out's storage: they outlive a `.data` swap of the tensors given, so
        # the addresses recorded here are neither freed nor reused while the plan lives; both paths work on them.
        self._bound_weights, self._bound_out = [w.detach() for w in weights], [o.detach() for o in out]
        self._weight_ptrs = tuple(map(_data_ptr, weights))
        self._weight_shapes = tuple(map(_shape, weights))
        self._out_ptrs = tuple(map(_data_ptr, out))
        # Gradients by weak reference: each callback records a freed one, so run() needs one test, and while none
        # is freed, equal ids mean the same objects.
        self._freed: list = []
        self._grad_refs = None if grads is None else tuple(weakref.ref(g, self._freed.append) for g in grads)
        self._grad_ids = None if grads is None else tuple(map(id, grads))
        self._grad_ptrs = None if grads is None else tuple(map(_data_ptr, grads))
        self._prepared = self._launch = None
        if self.impl == "triton":
            from .stats import launch_channel_stats, prepare_channel_stats

            self._prepared = prepare_channel_stats(self._bound_weights, grads, self._bound_out, dims)
            self._launch = launch_channel_stats

    @property
    def out(self) -> list[torch.Tensor]:
        """The ``out`` tensors this plan writes."""
        return list(self._out)

    def run(self, momentum: float | None = None) -> list[torch.Tensor]:
        """Write this step's statistics into ``out``, or with ``momentum`` m blend them:
        ``out = m·out + (1 − m)·new``. Returns the ``out`` tensors. Only ``momentum`` is checked here."""
        if momentum is not None:
            momentum = check_momentum(momentum)
        if self._freed:
            raise RuntimeError(
                "ChannelStatsPlan.run: a gradient this plan was built on has been freed (p.grad = None, or "
                "zero_grad(set_to_none=True)); build a new plan for the current gradients"
            )
        if self._launch is not None:
            self._launch(self._prepared, momentum)
        else:
            grads = None if self._grad_refs is None else [ref() for ref in self._grad_refs]
            reference._channel_stats(self._bound_weights, grads, self._bound_out, momentum, self._dims)
        return list(self._out)

    __call__ = run

    def matches(
        self,
        weights: Sequence[torch.Tensor],
        grads: Sequence[torch.Tensor] | None = None,
        out: Sequence[torch.Tensor] | None = None,
    ) -> bool:
        """Whether this plan still computes ``channel_stats(weights, grads, out=out)``: the very tensor objects it
        was built on (``out`` is not compared when None), at the addresses recorded then, weights of the same
        shapes, no gradient freed since. A different object, even a view of the same memory, does not match:
        build a new plan. No validation; about 0.1 µs per tensor. (The plan holds the weights' and out's storage,
        so no new allocation can take their old addresses.) Not detected: new strides at an unchanged address and
        shape, which only in-place metadata changes make (``as_strided_``, ``set_``, ``.data`` set to a restrided
        view of the same memory)."""
        if len(weights) != len(self._weights) or (grads is None) != (self._grad_ids is None):
            return False
        if not all(map(operator.is_, weights, self._weights)) or tuple(map(_data_ptr, weights)) != self._weight_ptrs:
            return False
        if tuple(map(_shape, weights)) != self._weight_shapes:
            return False
        if grads is not None:
            if self._freed or tuple(map(id, grads)) != self._grad_ids:
                return False
            if tuple(map(_data_ptr, grads)) != self._grad_ptrs:
                return False
        if out is not None:
            if len(out) != len(self._out) or not all(map(operator.is_, out, self._out)):
                return False
            if tuple(map(_data_ptr, out)) != self._out_ptrs:
                return False
        return True


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


def gather_channels_groups(
    groups: Sequence[GatherGroup],
    *,
    impl: str = "auto",
) -> list[list[torch.Tensor | None]]:
    """Many index maps in one launch per dtype: group by group, what :func:`gather_channels_many` computes.

    Each group is a :class:`GatherGroup` ``(tensors, dims, index, scales=None, noise_stds=None, seed=0)``, the
    arguments of one ``gather_channels_many`` call, with two differences: ``index`` and each scale or std tensor
    may be on the CPU or on the tensors' device (all tensors of all groups share one device), and an entry of
    ``tensors`` may be ``GroupOutput(g, k)``, output k of an earlier group g — as when one group rewrites a conv
    weight's input columns and the next its output rows. Such an output is consumed: it is the later group's
    input, not a result (None in group g's list), and may be consumed once. The result is one list per group,
    as ``gather_channels_many`` would return it, computed as if the groups ran one after the other::

        out[g][k][j] = (index_g[j] >= 0 ? input[g][k][index_g[j]] · scales_g[k][j] : 0) + noise_stds_g[k][j] · N(0, 1)

    Noise: the torch path gives exactly the values of the torch twin called group by group; the Triton path
    exactly those of ``gather_channels_many(..., impl="triton")`` called group by group (same seeds, same noise
    offsets within each group). The two paths agree in distribution, not in value.

    Host and device. Nothing here reads data that lives on the device, so the host never waits for it. Index
    maps given on the CPU are range-checked there, and std vectors given on the CPU checked for finite values
    >= 0 (one vectorised pass over all groups); all the CPU data then goes to the device in one non-blocking
    copy, with the descriptor table. Index maps and vectors given on the device are checked for type, shape and
    device only: the Triton kernel reads an index outside [-1, size) as -1 (a zero slice) instead of reading out
    of bounds, the torch twin fails as ``index_select`` does; a negative std given on the device scales the
    noise by that value. A bad argument raises ``ValueError`` naming the group and the argument before any launch.

    Launches: one per dtype. A consumed output is not stored: its consumer's rows do both gathers, along the
    two dims, in the same launch (the first must add no noise, and the dims be different with only size-1 dims
    between them). Where that does not hold, the consumed output is stored by one launch and read by a later
    one (one more launch per dtype for each such step).

    Host cost (``python -m benchmarks.host``: CPU tensors, Triton path, kernel launch replaced by a no-op; AMD
    EPYC, 1 thread, median): about 4–5.5 µs per tensor — 0.90 ms for a VGG-19 growth step (16 groups, 176 tensors,
    30 of them chained) and 0.58–0.65 ms for a pruning step (14–15 groups, 154–165 tensors). The per-group calls
    this replaces also stopped the host at every index and std check and table copy on a GPU. Each launch then
    adds Triton's own launch overhead. The package's surgery builds its changes unchecked (its planner knows
    every shape; ``_groups.GatherBatch``), whose run takes 0.41–0.57 ms for the same steps.

    Args:
        groups: a sequence of :class:`GatherGroup` (or plain tuples in its order).
        impl: "auto", "triton" or "torch" (see the module docstring).

    Returns:
        Per group, one new contiguous tensor per entry (None for a consumed output).
    """
    checked = check_gather_groups(groups)
    if not checked.groups:  # nothing to gather, so no device to run on: only the impl's name is checked
        if impl not in IMPLS:
            raise ValueError(f"impl: expected one of {IMPLS}, got {impl!r}")
        return []
    if resolve_impl(impl, checked.device) == "torch":
        return reference._gather_groups(checked)
    from .gather import gather_groups_triton

    return gather_groups_triton(checked)


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

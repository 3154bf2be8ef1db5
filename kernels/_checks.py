"""Argument checks and implementation dispatch shared by the Triton kernels and their torch twins.

Every check runs on the host before any launch and raises ``ValueError`` naming the argument,
what was expected and what was given, so that a bad call never reaches a kernel.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import torch

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
IMPLS = ("auto", "triton", "torch")


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_impl(impl: str, device: torch.device) -> str:
    """Return "triton" or "torch" for tensors on ``device``; raise where the request cannot be met."""
    if impl not in IMPLS:
        raise ValueError(f"impl: expected one of {IMPLS}, got {impl!r}")
    if impl == "torch":
        return "torch"
    runnable = triton_available() and (device.type == "cuda" or (device.type == "cpu" and interpreter_enabled()))
    if impl == "auto":
        # CPU tensors take the torch twin even under the interpreter: training on CPU stays fast.
        return "triton" if runnable and device.type == "cuda" else "torch"
    if not triton_available():
        raise RuntimeError("impl='triton': triton is not installed; use impl='torch' or 'auto'")
    if not runnable:
        raise RuntimeError(
            f"impl='triton': tensors are on {device}, and Triton runs on CUDA tensors, or on CPU tensors only "
            "when TRITON_INTERPRET=1 is set before triton is imported; use impl='auto' or 'torch'"
        )
    return "triton"


def check_float_tensor(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{name}: expected dtype float32, float16 or bfloat16, got {t.dtype}")
    return t


def check_dim(name: str, dim: int, t: torch.Tensor) -> int:
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise ValueError(f"{name}: expected an int, got {type(dim).__name__}")
    if t.dim() == 0 or not -t.dim() <= dim < t.dim():
        raise ValueError(
            f"{name}: expected a dim in [{-t.dim()}, {t.dim()}) for a tensor of shape {tuple(t.shape)}, got {dim}"
        )
    return dim % t.dim()


def same_device(name: str, tensors: Sequence[torch.Tensor]) -> torch.device:
    device = tensors[0].device
    for i, t in enumerate(tensors):
        if t.device != device:
            raise ValueError(f"{name}: all tensors must be on one device; [0] is on {device}, [{i}] is on {t.device}")
    return device


def check_index(index: object, size: int, device: torch.device) -> torch.Tensor:
    """An index map: int64, 1-D, on ``device``, values in [-1, size)."""
    if not isinstance(index, torch.Tensor):
        raise ValueError(f"index: expected an int64 torch.Tensor, got {type(index).__name__}")
    if index.dtype != torch.int64:
        raise ValueError(f"index: expected dtype int64, got {index.dtype}")
    if index.dim() != 1:
        raise ValueError(f"index: expected a 1-D tensor, got shape {tuple(index.shape)}")
    if index.device != device:
        raise ValueError(f"index: expected a tensor on {device} (the device of src), got {index.device}")
    if index.numel():
        lo, hi = int(index.min()), int(index.max())
        if lo < -1:
            raise ValueError(f"index: values must be in [-1, {size}); found {lo}")
        if hi >= size:
            raise ValueError(f"index: values must be in [-1, {size}); found {hi}")
    return index


def check_per_slice(name: str, value: object, length: int, device: torch.device) -> torch.Tensor | None:
    """``None`` or a 1-D float tensor with one entry per output slice."""
    if value is None:
        return None
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise ValueError(f"{name}: expected None or a 1-D float tensor of length {length}, got {_describe(value)}")
    if value.shape != (length,):
        raise ValueError(f"{name}: expected shape ({length},) (one entry per index), got {tuple(value.shape)}")
    if value.device != device:
        raise ValueError(f"{name}: expected a tensor on {device}, got {value.device}")
    return value


def check_noise_std(name: str, value: object, length: int, device: torch.device) -> float | torch.Tensor:
    """A non-negative float, or a 1-D float tensor of per-slice standard deviations."""
    if isinstance(value, torch.Tensor):
        std = check_per_slice(name, value, length, device)
        if std.numel() and float(std.min()) < 0:
            raise ValueError(f"{name}: expected standard deviations >= 0, found {float(std.min())}")
        return std
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: expected a float >= 0 or a 1-D float tensor, got {_describe(value)}")
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"{name}: expected a float >= 0, got {value}")
    return float(value)


def check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
        raise ValueError(f"seed: expected an int in [0, 2**31), got {seed!r}")
    return seed


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return repr(value)


def check_channel_stats_args(
    weights: object,
    grads: object,
    out: object,
    momentum: object,
    dim: object,
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None, list[torch.Tensor] | None, float | None, list[int]]:
    """Validate a ``channel_stats`` call; return (weights, grads, out, momentum, dims) as lists."""
    if isinstance(weights, torch.Tensor) or not isinstance(weights, Sequence):
        raise ValueError(f"weights: expected a sequence of tensors, got {_describe(weights)}")
    weights = [check_float_tensor(f"weights[{i}]", w) for i, w in enumerate(weights)]
    if not weights:
        raise ValueError("weights: expected at least one tensor, got an empty sequence")
    device = same_device("weights", weights)
    if isinstance(dim, int) and not isinstance(dim, bool):
        dims = [dim] * len(weights)
    elif isinstance(dim, Sequence) and len(dim) == len(weights):
        dims = list(dim)
    else:
        raise ValueError(f"dim: expected an int or one int per weight ({len(weights)}), got {dim!r}")
    dims = [check_dim(f"dim[{i}]", d, w) for i, (d, w) in enumerate(zip(dims, weights))]
    for i, w in enumerate(weights):
        if w.numel() == 0:
            raise ValueError(f"weights[{i}]: expected a non-empty tensor, got shape {tuple(w.shape)}")
    if grads is not None:
        if isinstance(grads, torch.Tensor) or not isinstance(grads, Sequence) or len(grads) != len(weights):
            raise ValueError(f"grads: expected None or one tensor per weight ({len(weights)}), got {_describe(grads)}")
        grads = [check_float_tensor(f"grads[{i}]", g) for i, g in enumerate(grads)]
        for i, (w, g) in enumerate(zip(weights, grads)):
            if g.shape != w.shape:
                raise ValueError(f"grads[{i}]: expected shape {tuple(w.shape)} (as weights[{i}]), got {tuple(g.shape)}")
            if g.device != device:
                raise ValueError(f"grads[{i}]: expected a tensor on {device} (as the weights), got {g.device}")
    if momentum is not None:
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
            raise ValueError(f"momentum: expected a float in [0, 1), got {momentum!r}")
        if out is None:
            raise ValueError("momentum: given without out; the EMA blends new statistics into out")
        momentum = float(momentum)
    if out is not None:
        if isinstance(out, torch.Tensor) or not isinstance(out, Sequence) or len(out) != len(weights):
            raise ValueError(f"out: expected None or one tensor per weight ({len(weights)}), got {_describe(out)}")
        out = list(out)
        for i, (o, w, d) in enumerate(zip(out, weights, dims)):
            expected = (w.shape[d], 4)
            if not isinstance(o, torch.Tensor) or o.dtype != torch.float32 or tuple(o.shape) != expected:
                raise ValueError(f"out[{i}]: expected a float32 tensor of shape {expected}, got {_describe(o)}")
            if o.device != device:
                raise ValueError(f"out[{i}]: expected a tensor on {device} (as the weights), got {o.device}")
    return weights, grads, out, momentum, dims


_SINGLE_NAMES = {"tensors": "src", "dims": "dim", "scales": "scale", "noise_stds": "noise_std"}


def check_gather_args(
    tensors: object,
    dims: object,
    index: object,
    scales: object,
    noise_stds: object,
    seed: object,
    *,
    single: bool = False,
) -> tuple[list[torch.Tensor], list[int], torch.Tensor, list[torch.Tensor | None], list[float | torch.Tensor]]:
    """Validate a batched gather; return (tensors, dims, index, scales, noise_stds) with one entry per tensor.

    ``single``: the call came from ``gather_channels(src, index, dim, scale=, noise_std=)``, so messages
    name those arguments instead of the batched form's list entries.
    """

    def name(kind: str, i: int) -> str:
        return _SINGLE_NAMES[kind] if single else f"{kind}[{i}]"

    if isinstance(tensors, torch.Tensor) or not isinstance(tensors, Sequence) or not tensors:
        raise ValueError(f"tensors: expected a non-empty sequence of tensors, got {_describe(tensors)}")
    tensors = [check_float_tensor(name("tensors", i), t) for i, t in enumerate(tensors)]
    n = len(tensors)
    device = same_device("tensors", tensors)
    if isinstance(dims, int) or not isinstance(dims, Sequence) or len(dims) != n:
        raise ValueError(f"dims: expected one dim per tensor ({n}), got {dims!r}")
    dims = [check_dim(name("dims", i), d, t) for i, (d, t) in enumerate(zip(dims, tensors))]
    sizes = {t.shape[d] for t, d in zip(tensors, dims)}
    if len(sizes) != 1:
        shown = ", ".join(f"tensors[{i}].shape[{d}]={t.shape[d]}" for i, (t, d) in enumerate(zip(tensors, dims)))
        raise ValueError(f"tensors: one index map needs the same size along each dim; got {shown}")
    index = check_index(index, sizes.pop(), device)
    length = index.numel()
    scales = [None] * n if scales is None else scales
    if not isinstance(scales, Sequence) or len(scales) != n:
        raise ValueError(
            f"scales: expected None or one entry (None or tensor) per tensor ({n}), got {_describe(scales)}"
        )
    scales = [check_per_slice(name("scales", i), s, length, device) for i, s in enumerate(scales)]
    noise_stds = [0.0] * n if noise_stds is None else noise_stds
    if not isinstance(noise_stds, Sequence) or len(noise_stds) != n:
        raise ValueError(f"noise_stds: expected None or one entry per tensor ({n}), got {_describe(noise_stds)}")
    noise_stds = [check_noise_std(name("noise_stds", i), s, length, device) for i, s in enumerate(noise_stds)]
    check_seed(seed)
    return tensors, dims, index, scales, noise_stds

"""Argument checks and implementation dispatch shared by the Triton kernels and their torch twins.

Every check runs on the host before any launch and raises ``ValueError`` naming the argument,
what was expected and what was given, so that a bad call never reaches a kernel.
"""

from __future__ import annotations

import functools
import math
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


def check_has_data(name: str, t: torch.Tensor) -> torch.Tensor:
    """A dense tensor whose elements can be read: not on the meta device, not sparse."""
    if t.is_meta:  # (t.device.type costs 5x more: this runs for every tensor of every call)
        raise ValueError(f"{name}: expected a tensor with data (cpu or cuda), got a meta tensor")
    if t.layout is not torch.strided:
        raise ValueError(f"{name}: expected a dense (strided) tensor, got layout {t.layout}")
    return t


def check_float_tensor(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{name}: expected dtype float32, float16 or bfloat16, got {t.dtype}")
    return check_has_data(name, t)


def _element_offsets(t: torch.Tensor) -> torch.Tensor:
    """The offset (in elements, from ``t``'s first element) of every element of ``t``: 1-D int64 on the CPU."""
    offsets = torch.zeros((), dtype=torch.int64, device="cpu")
    for size, stride in zip(t.shape, t.stride()):
        offsets = offsets[..., None] + torch.arange(size, device="cpu") * stride
    return offsets.reshape(-1)


def has_internal_overlap(t: torch.Tensor) -> bool:
    """Whether two elements of ``t`` share memory (a zero stride, an ``expand``, an overlapping ``as_strided``).

    Cheap for every usual layout: with the dims sorted by stride, each stride passing the farthest offset
    the smaller dims reach proves the elements distinct. Only a layout that fails that test (interleaved
    strides) has its element offsets enumerated; the callers use it for small tensors (``out``).
    """
    if t.is_contiguous():
        return False
    dims = sorted((stride, size) for size, stride in zip(t.shape, t.stride()) if size > 1)
    reach = 0  # the farthest offset the dims so far can reach
    for stride, size in dims:
        if stride <= reach:
            break
        reach += (size - 1) * stride
    else:
        return False
    if dims[0][0] == 0:
        return True
    # torch._debug_has_internal_overlap would say "too hard" here (it only proves zero strides): count offsets.
    return _element_offsets(t).unique().numel() != t.numel()


def _byte_span(t: torch.Tensor) -> tuple[int, int]:
    """The [first, last) byte addresses that elements of a non-empty ``t`` can occupy."""
    start = t.data_ptr()
    if t.is_contiguous():
        return start, start + t.nbytes
    reach = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    return start, start + (reach + 1) * t.element_size()


def _share_elements(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b``, whose byte spans intersect, share an element (exact for one dtype and alignment)."""
    delta, size = b.data_ptr() - a.data_ptr(), a.element_size()
    if a.dtype != b.dtype or delta % size:
        return True  # partly overlapping elements: refuse
    return bool(torch.isin(_element_offsets(a), _element_offsets(b) + delta // size).any())


def check_out_memory(out: list[torch.Tensor], inputs: dict[str, list[torch.Tensor]]) -> None:
    """Refuse ``out`` tensors that overlap themselves, each other, or an input (the kernel writes them in place).

    Runs on every call, so it stays cheap: one sort of byte spans, then a sweep that keeps the farthest end
    of the outs and of the inputs seen so far (inputs are only read: they may share memory with each other).
    Two outs whose spans meet (interleaved views of one buffer) are settled exactly; an out whose span
    meets an input's is refused.
    """
    for i, o in enumerate(out):
        if has_internal_overlap(o):
            raise ValueError(
                f"out[{i}]: expected a tensor whose elements do not share memory (no zero strides, no expand), "
                f"got strides {o.stride()} for shape {tuple(o.shape)}"
            )
    groups = [("out", out), *inputs.items()]
    spans = sorted((*_byte_span(t), i, kind) for kind, tensors in groups for i, t in enumerate(tensors))
    out_end, input_end, input_seen = 0, 0, ("", 0)  # farthest ends so far, and the input reaching input_end
    seen_outs: list[tuple[int, int]] = []  # (end, i) of the outs so far
    for start, end, i, kind in spans:
        if kind == "out":
            if start < input_end:
                raise ValueError(
                    f"out[{i}]: shares memory with {input_seen[0]}[{input_seen[1]}]; out is written in place "
                    "and must not alias an input"
                )
            if start < out_end:  # rare: settle against every earlier out that reaches this one
                for other_end, j in seen_outs:
                    if other_end > start and _share_elements(out[min(i, j)], out[max(i, j)]):
                        raise ValueError(
                            f"out[{max(i, j)}]: shares memory with out[{min(i, j)}]; expected separate tensors"
                        )
            seen_outs.append((end, i))
            out_end = max(out_end, end)
        else:
            if start < out_end:
                j = next(j for other_end, j in seen_outs if other_end > start)
                raise ValueError(
                    f"out[{j}]: shares memory with {kind}[{i}]; out is written in place and must not alias an input"
                )
            if end > input_end:
                input_end, input_seen = end, (kind, i)


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
    check_has_data("index", index)
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
    check_has_data(name, value)
    if value.device != device:
        raise ValueError(f"{name}: expected a tensor on {device}, got {value.device}")
    return value


def check_noise_std(name: str, value: object, length: int, device: torch.device) -> float | torch.Tensor:
    """A finite non-negative float, or a 1-D float tensor of finite per-slice standard deviations >= 0."""
    if isinstance(value, torch.Tensor):
        std = check_per_slice(name, value, length, device)
        bad = ~(std >= 0) | std.isinf()  # NaN fails >= 0
        if bool(bad.any()):  # one host sync, as the check had before
            raise ValueError(f"{name}: expected standard deviations >= 0 and finite, found {float(std[bad][0])}")
        return std
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: expected a float >= 0 or a 1-D float tensor, got {_describe(value)}")
    if not 0 <= value < math.inf:  # also rejects NaN
        raise ValueError(f"{name}: expected a float >= 0 and finite, got {value}")
    return float(value)


def check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
        raise ValueError(f"seed: expected an int in [0, 2**31), got {seed!r}")
    return seed


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return repr(value)


def check_momentum(momentum: object) -> float:
    """An EMA momentum: a float in [0, 1) (``None`` is the caller's business: it means no blending)."""
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
        raise ValueError(f"momentum: expected a float in [0, 1), got {momentum!r}")
    return float(momentum)


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
        momentum = check_momentum(momentum)
        if out is None:
            raise ValueError("momentum: given without out; the EMA blends new statistics into out")
    if out is not None:
        if isinstance(out, torch.Tensor) or not isinstance(out, Sequence) or len(out) != len(weights):
            raise ValueError(f"out: expected None or one tensor per weight ({len(weights)}), got {_describe(out)}")
        out, grad_mode = list(out), torch.is_grad_enabled()
        for i, (o, w, d) in enumerate(zip(out, weights, dims)):
            expected = (w.shape[d], 4)
            if not isinstance(o, torch.Tensor) or o.dtype != torch.float32 or tuple(o.shape) != expected:
                raise ValueError(f"out[{i}]: expected a float32 tensor of shape {expected}, got {_describe(o)}")
            check_has_data(f"out[{i}]", o)
            if o.device != device:
                raise ValueError(f"out[{i}]: expected a tensor on {device} (as the weights), got {o.device}")
            if o.requires_grad and grad_mode:  # the torch twin's in-place update would raise a RuntimeError
                raise ValueError(
                    f"out[{i}]: expected a tensor that does not require grad (it is written in place), "
                    "or a call under torch.no_grad()"
                )
        check_out_memory(out, {"weights": weights, "grads": grads or []})
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

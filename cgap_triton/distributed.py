"""Several processes through torchrun: PyTorch DistributedDataParallel, structural changes in lock-step.

Every rank holds the whole model and takes its shard of each global batch. Decisions (growth, pruning)
are computed on every rank from identical inputs — saliency all-reduced, validation accuracy broadcast
from rank 0 — and the resulting WidthChange is verified identical across ranks before it is applied.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .environment import resolve_device


class RankDisagreement(RuntimeError):
    """Ranks computed different structural decisions; continuing would train different models."""


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device_name: str) -> tuple[World, torch.device]:
    """Join the process group torchrun describes (WORLD_SIZE > 1); pick this rank's device."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(), resolve_device(device_name)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda") or device_name.startswith("cuda")
    if use_cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", device_id=device if use_cuda else None)
    return World(rank, size, local_rank), device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean_(tensors: list[torch.Tensor], world: World) -> None:
    if not world.distributed:
        return
    for t in tensors:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(world.size)


def any_rank(flags: list[bool], world: World, device: torch.device) -> list[bool]:
    """Element-wise OR of boolean flags over ranks (one small all-reduce)."""
    if not world.distributed:
        return flags
    t = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def broadcast_value(value: Any, world: World) -> Any:
    """Rank 0's value of a small picklable object, on every rank."""
    if not world.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def fingerprint(obj: Any) -> str:
    """A digest of a decision: tensors by their bytes, everything else by its pickle."""
    h = hashlib.sha256()

    def feed(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            h.update(x.detach().cpu().contiguous().numpy().tobytes())
        elif isinstance(x, dict):
            for k in sorted(x, key=str):
                h.update(str(k).encode())
                feed(x[k])
        elif isinstance(x, (list, tuple)):
            for v in x:
                feed(v)
        else:
            h.update(pickle.dumps(x))

    feed(obj)
    return h.hexdigest()


def verify_identical(obj: Any, what: str, world: World) -> None:
    """Raise RankDisagreement on every rank unless ``obj`` is identical on all ranks."""
    if not world.distributed:
        return
    digests: list[str | None] = [None] * world.size
    dist.all_gather_object(digests, fingerprint(obj))
    if len(set(digests)) != 1:
        by_rank = ", ".join(f"rank {r}: {d[:12]}" for r, d in enumerate(digests))
        raise RankDisagreement(
            f"ranks disagree on {what} ({by_rank}); every rank must compute the same structural change. "
            f"This points at non-deterministic inputs to the decision (saliency, validation accuracy)."
        )

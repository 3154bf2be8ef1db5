"""What this machine can do, checked before a run folder exists: the device and the compile backend."""

from __future__ import annotations

import torch

from .recipe import Recipe


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def device_problem(name: str) -> str | None:
    """Why ``train.device = name`` cannot run here, or None."""
    if name == "auto":
        return None
    expected = 'expected "auto", "cpu", "cuda" or "cuda:N"'
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        return f"train.device: {expected}, got {name!r}"
    if device.type == "cpu":
        return None
    if device.type != "cuda":
        return f"train.device: {expected}, got {name!r}"
    if not torch.cuda.is_available():
        return f'train.device: {name!r} asked for, but this machine has no usable CUDA GPU; use "auto" or "cpu"'
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        return (
            f"train.device: {name!r} asked for, but this machine has {count} CUDA GPU(s) (cuda:0 to cuda:{count - 1})"
        )
    return None


def backend_problem(recipe: Recipe) -> str | None:
    """Why ``compile.backend`` cannot be used here, or None (also None when nothing will be compiled)."""
    cfg = recipe.compile
    if not cfg.enabled or cfg.policy == "never":
        return None
    import torch._dynamo

    known = set(torch._dynamo.list_backends(exclude_tags=())) | {"inductor"}
    if cfg.backend not in known:
        import difflib

        shown = sorted(set(torch._dynamo.list_backends()) | {"inductor", "aot_eager", "eager"})  # no debug-only ones
        near = difflib.get_close_matches(cfg.backend, sorted(known), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        return f"compile.backend: expected one of {', '.join(shown)}{hint}, got {cfg.backend!r}"
    return None


def environment_problems(recipe: Recipe) -> list[str]:
    """Everything about this machine that stops ``recipe`` from running; empty when it can run."""
    return [p for p in (device_problem(recipe.train.device), backend_problem(recipe)) if p]

"""Saliency of every unit: per-channel statistics after backward, smoothed by an EMA, in one kernel call."""

from __future__ import annotations

import torch

from ..kernels import channel_stats
from ..models import GrowableNet

# channel_stats columns: l1 = Σ|w|, l2sq = Σw², wg = Σw·g, wg_abs = Σ|w·g|
_COLUMN = {"l1": 0, "l2": 1, "taylor_signed": 2, "taylor": 3}


class SaliencyTracker:
    """``S_u ← μ·S_u + (1−μ)·s_u`` for every unit of every group, with ``s_u`` the criterion's statistic.

    One ``channel_stats`` call per update covers all groups, the EMA fused into the same pass. The
    buffers (float32 ``[C, 4]`` per group) follow every width change through surgery.
    """

    def __init__(self, model: GrowableNet, criterion: str = "taylor", momentum: float = 0.9, every: int = 1):
        self.model, self.criterion, self.momentum, self.every = model, criterion, momentum, every
        self.needs_grads = criterion.startswith("taylor")
        device = next(model.parameters()).device
        self.buffers = {
            g.name: torch.zeros(model.get_parameter(g.saliency).shape[0], 4, device=device) for g in model.groups
        }
        self.updates = 0

    @torch.no_grad()
    def update(self, step: int) -> None:
        """After a backward pass: fold this batch's statistics into the EMA (every ``every`` steps)."""
        if step % self.every:
            return
        weights = [self.model.get_parameter(g.saliency) for g in self.model.groups]
        grads = None
        if self.needs_grads:
            grads = [w.grad for w in weights]
            if any(g is None for g in grads):
                return
        # The first update seeds the average instead of blending into zeros.
        momentum = self.momentum if self.updates else None
        channel_stats(weights, grads, out=[self.buffers[g.name] for g in self.model.groups], momentum=momentum)
        self.updates += 1

    def scores(self) -> dict[str, torch.Tensor]:
        """S per unit, per group (float32, on the buffers' device)."""
        column = _COLUMN[self.criterion]
        out = {}
        for name, buf in self.buffers.items():
            s = buf[:, column]
            out[name] = s * s if self.criterion == "taylor_signed" else s.clone()
        return out

    def state_dict(self) -> dict:
        return {"buffers": {k: v.cpu() for k, v in self.buffers.items()}, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        device = next(self.model.parameters()).device
        self.buffers = {k: v.to(device) for k, v in state["buffers"].items()}
        self.updates = state["updates"]

"""The one owner of structural change: a model's widths and everything that must follow them.

:class:`Structure` is built once from the model, its optimizer and its saliency tracker. ``apply(change)``
runs surgery (weights, BatchNorm, consumer columns, optimizer state, saliency, all through the same index
maps), restores the memory layout, lets the saliency plan be rebuilt, updates sizes, the peak, the growth
trajectory and the change counts, and returns the typed event. The trainer only sequences: it unwraps DDP,
calls :meth:`Structure.apply`, and invalidates its compiled step.
"""

from __future__ import annotations

from typing import Any

import torch

from ..models import GrowableNet, SizeOracle
from ..telemetry.events import STRUCTURAL_CHANGES, StructuralChange
from .change import WidthChange
from .children import twin_share
from .importance import SaliencyTracker
from .surgery import apply_width_change


class Structure:
    """Widths, sizes and change history of one model, changed only through :meth:`apply`."""

    def __init__(
        self,
        model: GrowableNet,
        optimizer: torch.optim.Optimizer | None,
        tracker: SaliencyTracker | None,
        sizes: SizeOracle,
        *,
        params_full: int,
        channels_last: bool = False,
        impl: str = "auto",
    ):
        self.model, self.optimizer, self.tracker, self.sizes = model, optimizer, tracker, sizes
        self.params_full, self.channels_last, self.impl = params_full, channels_last, impl
        self.params, self.macs = sizes(model.widths)
        self.peak_params = self.params
        self.counts: dict[str, int] = {}  # structural changes by kind
        self.trajectory: list[dict[str, Any]] = []  # params and widths after every change (the growth curve)

    @property
    def widths(self) -> dict[str, int]:
        return self.model.widths

    @property
    def changes(self) -> int:
        return sum(self.counts.values())

    def record(self, step: int) -> None:
        """Add the current size to the trajectory (at the start of a run, and after every change)."""
        self.trajectory.append({"step": step, "params": self.params, "widths": self.model.widths})

    def apply(self, change: WidthChange, *, step: int, epoch: float) -> StructuralChange:
        """Carry out ``change`` on the model and everything that follows its widths; return its event.

        Every tensor still holding an autograd graph of the old shapes (the last loss) must be gone.
        """
        before = self.model.widths
        saliency = self.tracker.buffers if self.tracker is not None else None
        apply_width_change(self.model, change, optimizer=self.optimizer, saliency=saliency, impl=self.impl)
        if self.channels_last:
            self._restore_channels_last()
        if self.tracker is not None:  # the newborn rule; its prepared call held the old tensors
            self.tracker.after_change(change)
        self.params, self.macs = self.sizes(self.model.widths)
        self.peak_params = max(self.peak_params, self.params)
        self.counts[change.kind] = self.counts.get(change.kind, 0) + 1
        self.record(step)
        return STRUCTURAL_CHANGES[change.kind](
            step=step,
            epoch=epoch,
            change=change.summary(before),
            widths=self.model.widths,
            params=self.params,
            macs=self.macs,
            params_reduction=1 - self.params / self.params_full,
            changes=self.changes,
        )

    def twin_fractions(self) -> dict[str, float]:
        """Per group, the share of units whose incoming filter is a near-copy of another unit's (cosine > 0.9)."""
        groups = self.model.groups
        shares = torch.stack([twin_share(self.model.get_parameter(g.saliency)) for g in groups]).tolist()  # one read
        return {g.name: round(share, 4) for g, share in zip(groups, shares)}

    def _restore_channels_last(self) -> None:
        """Surgery's outputs are contiguous: give parameters and their optimizer state NHWC back (same objects).

        Optimizer state keeps its parameter's layout, as fused optimizers require."""
        self.model.to(memory_format=torch.channels_last)
        if self.optimizer is None:
            return
        for p, state in self.optimizer.state.items():
            if p.dim() != 4:
                continue
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.shape == p.shape:
                    state[key] = value.contiguous(memory_format=torch.channels_last)

    def state_dict(self) -> dict[str, Any]:
        return {"peak_params": self.peak_params, "counts": dict(self.counts), "trajectory": list(self.trajectory)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.peak_params = max(self.params, int(state["peak_params"]))
        self.counts = dict(state["counts"])
        self.trajectory = list(state["trajectory"])

"""One training step, defined once: forward (under autocast), loss, backward, saliency update, optimizer step.

The trainer, the benchmarks and any GPU capture use :class:`TrainStep`. Policies wrap it rather than live in
it: the trainer checks the loss between :meth:`TrainStep.forward` and :meth:`TrainStep.backward` and the
gradients before :meth:`TrainStep.update` (nan_policy "skip"), and DDP lives in the ``model`` callable.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .cgap.importance import SaliencyTracker


class TrainStep:
    """``model`` is the callable the step runs (the raw module, a compiled wrapper, DDP around it)."""

    def __init__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        optimizer: torch.optim.Optimizer,
        tracker: SaliencyTracker | None,
        *,
        device_type: str = "cpu",
        precision: str = "fp32",
        label_smoothing: float = 0.0,
    ):
        self.model, self.optimizer, self.tracker = model, optimizer, tracker
        self.device_type, self.label_smoothing = device_type, label_smoothing
        self.bf16 = precision == "bf16"

    def autocast(self):
        """bf16 autocast for the forward pass when asked for (weights and optimizer state stay fp32)."""
        return torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.bf16)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean loss, logits) of the batch; the gradients are zeroed in place for the backward to come.

        Zeroed, not freed: gradients keep their addresses, so the saliency plan built on them stays valid."""
        with self.autocast():
            logits = self.model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
        self.optimizer.zero_grad(set_to_none=False)
        return loss, logits

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def update(self, step: int) -> None:
        """Fold this step's statistics into the saliency, then step the optimizer (``step``: steps done before)."""
        if self.tracker is not None:
            self.tracker.update(step)
        self.optimizer.step()

    def __call__(self, x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole step, with no checks in between; returns (mean loss, logits)."""
        loss, logits = self.forward(x, y)
        self.backward(loss)
        self.update(step)
        return loss, logits

"""One training step, defined once: forward (under autocast), loss, backward, saliency update, optimizer step.

The trainer, the benchmarks and any GPU capture use :class:`TrainStep`. Policies wrap it rather than live in
it: the trainer checks the loss between :meth:`TrainStep.forward` and :meth:`TrainStep.backward` and the
gradients before :meth:`TrainStep.update` (nan_policy "skip"), and DDP lives in the ``model`` callable.
"""

from __future__ import annotations

import math
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


class LearningRate:
    """The learning rate at every step: linear warm-up, then step (milestones), cosine or constant."""

    def __init__(self, optim_cfg, total_steps: int, steps_per_epoch: int):
        self.cfg, self.total_steps = optim_cfg, total_steps
        self.warmup = optim_cfg.warmup_epochs * steps_per_epoch

    def __call__(self, step: int) -> float:
        o = self.cfg
        progress = step / self.total_steps
        if self.warmup and step < self.warmup:
            return o.lr * (step + 1) / self.warmup
        if o.schedule == "constant":
            return o.lr
        if o.schedule == "cosine":
            return 0.5 * o.lr * (1 + math.cos(math.pi * progress))
        return o.lr * 0.1 ** sum(progress >= m for m in o.milestones)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        lr = self(step)
        for group in optimizer.param_groups:
            group["lr"] = lr


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches, autocast) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(correct, summed loss) as device tensors, and the image count, of ``model`` in eval mode over ``batches``;
    ``autocast()`` gives the forward's precision. The model is left in training mode."""
    model.eval()
    correct = total_loss = None
    images = 0
    for x, y in batches:
        with autocast():
            logits = model(x).float()
        loss = F.cross_entropy(logits, y, reduction="sum")
        hits = (logits.argmax(1) == y).sum()
        correct = hits if correct is None else correct + hits
        total_loss = loss if total_loss is None else total_loss + loss
        images += y.numel()
    model.train()
    if correct is None:
        correct = total_loss = torch.zeros(())
    return correct, total_loss, images

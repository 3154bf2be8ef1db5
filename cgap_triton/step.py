"""One training step, defined once: forward (under autocast), loss, backward, saliency update, optimizer step.

The trainer, the benchmarks and any GPU capture use :class:`TrainStep`. Policies wrap it rather than live in
it: the trainer checks the loss between :meth:`TrainStep.forward` and :meth:`TrainStep.backward` and the
gradients before :meth:`TrainStep.update` (nan_policy "skip"), and DDP lives in the ``model`` callable.
"""

from __future__ import annotations

import math
import time
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


class GraphedStep:
    """The whole :class:`TrainStep` — forward under autocast, loss, backward, saliency update, optimizer step — as
    one CUDA graph, replayed every step: at a CIFAR batch a step is bound by kernel launches and host work, and a
    replay launches them all at once.

    What a replay needs and this class provides: static input buffers (each batch is copied in), a learning rate
    held in a device tensor (``set_lr`` writes it; the optimizer must have been built with that tensor as ``lr``
    and, for SGD, ``fused=True``, the form whose step can be captured), gradients zeroed in place (their
    addresses are baked into the graph, and into the saliency plan), and an autocast without its cast cache. The
    graph is captured at the first call and after :meth:`invalidate` (a structural change: new shapes), from a
    few warm-up steps on a side stream whose effects are then undone (parameters, buffers, optimizer state and
    saliency restored), so capturing changes no weight. The caller reads the returned loss and logits before the
    next call: they are the graph's static outputs, overwritten by every replay.
    """

    WARMUP = 3

    def __init__(self, step: TrainStep, model: torch.nn.Module):
        if step.tracker is not None and step.tracker.every != 1:
            raise ValueError("cuda_graphs: the saliency must update every step (cgap.importance.every = 1)")
        self.step, self.model = step, model
        self.graph: torch.cuda.CUDAGraph | None = None
        self.captures = 0
        self.capture_seconds = 0.0
        # Of which the first warm-up step at each new set of shapes (cuDNN's choice of algorithms and plans, the
        # first allocations, the saliency plan): what a capture costs beyond replaying steps.
        self.first_step_seconds = 0.0

    def invalidate(self) -> None:
        """Drop the graph and its memory pool (before a structural change frees the tensors it points at)."""
        self.graph = None
        self._static = None

    def set_lr(self, lr: float) -> None:
        for group in self.step.optimizer.param_groups:
            group["lr"].fill_(lr)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.graph is None:
            self._capture(x, y, step)
        static_x, static_y, loss, logits = self._static
        static_x.copy_(x, non_blocking=True)
        static_y.copy_(y, non_blocking=True)
        self.graph.replay()
        return loss, logits

    def _capture(self, x: torch.Tensor, y: torch.Tensor, step: int) -> None:
        started = time.perf_counter()
        static_x, static_y = x.clone(), y.clone()
        saved = self._snapshot()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for k in range(self.WARMUP):  # allocations, cuDNN choices and the saliency plan settle here
                self.step(static_x, static_y, step + k)
                if k == 0:
                    side.synchronize()
                    self.first_step_seconds += time.perf_counter() - started
        torch.cuda.current_stream().wait_stream(side)
        self._restore(saved)
        graph = torch.cuda.CUDAGraph()
        cache = torch.is_autocast_cache_enabled()
        torch.set_autocast_cache_enabled(False)  # cached casts would outlive the capture
        try:
            with torch.cuda.graph(graph):
                loss, logits = self.step(static_x, static_y, step)
        finally:
            torch.set_autocast_cache_enabled(cache)
        self.graph, self._static = graph, (static_x, static_y, loss, logits)
        torch.cuda.synchronize()  # once per capture: its time includes the warm-up's device work
        self.captures += 1
        self.capture_seconds += time.perf_counter() - started

    def _snapshot(self) -> dict:
        """Copies of everything a step changes: parameters, buffers (BatchNorm), optimizer state, saliency."""
        optimizer, tracker = self.step.optimizer, self.step.tracker
        return {
            "model": [t.detach().clone() for t in (*self.model.parameters(), *self.model.buffers())],
            "optim": {
                p: {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
                for p, s in optimizer.state.items()
            },
            "saliency": {k: v.clone() for k, v in tracker.buffers.items()} if tracker is not None else None,
            "updates": tracker.updates if tracker is not None else 0,
        }

    @torch.no_grad()
    def _restore(self, saved: dict) -> None:
        for t, copy in zip((*self.model.parameters(), *self.model.buffers()), saved["model"]):
            t.copy_(copy)
        optimizer = self.step.optimizer
        for p, state in saved["optim"].items():
            for k, v in state.items():
                if isinstance(v, torch.Tensor):
                    optimizer.state[p][k].copy_(v)
                else:
                    optimizer.state[p][k] = v
        for p, state in optimizer.state.items():  # state the warm-up created: as before a first step
            if p not in saved["optim"]:
                for value in state.values():
                    if isinstance(value, torch.Tensor):
                        value.zero_()
        tracker = self.step.tracker
        if tracker is not None:
            for k, v in saved["saliency"].items():
                tracker.buffers[k].copy_(v)
            # The graph holds the blending update: a run captured at its very first step starts its averages from
            # zero, where the eager step seeds them with the first batch's statistics.
            tracker.updates = max(1, saved["updates"])


def graphable_optimizer(name: str, params, *, lr: float, momentum: float, weight_decay: float, device):
    """The optimizer of ``name`` in the form a CUDA graph can capture: the learning rate a device tensor (the
    schedule writes it before each replay), SGD fused, Adam/AdamW capturable. Returns (optimizer, lr tensor)."""
    lr_tensor = torch.tensor(lr, dtype=torch.float32, device=device)
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=lr_tensor, momentum=momentum, weight_decay=weight_decay, fused=True
        ), lr_tensor
    cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    return cls(params, lr=lr_tensor, weight_decay=weight_decay, capturable=True), lr_tensor

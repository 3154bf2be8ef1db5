"""A run's health: non-finite losses, gradients and weights, under ``train.nan_policy``.

"stop" (one process): the first non-finite loss is remembered on the device, without waiting for it
(:meth:`Health.watch`); :meth:`Health.check` reads it before anything is logged, decided or saved, and stops
the run naming that step. "skip", or several ranks: the trainer decides at once, with a host sync, and a bad
batch never reaches the weights (:meth:`Health.skip`), up to ``train.skip_limit`` in a row or
``train.skip_fraction`` of all steps. Weights are checked before every file that holds them
(:meth:`Health.check_weights`): a non-finite weight is never saved.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .telemetry.events import SkippedStep, Stopped


class TrainingStopped(Exception):
    """The run cannot go on (a non-finite loss or weights); the message says where and why."""


class Health:
    """``where(step)`` describes a step for the messages (epoch, phase, rank); ``kept()`` says which checkpoint
    survives; ``log_event`` receives the Stopped and SkippedStep events."""

    def __init__(
        self,
        train_cfg,
        device: torch.device,
        *,
        where: Callable[[int], str],
        kept: Callable[[], str],
        log_event: Callable,
    ):
        self.cfg, self.where, self.kept, self.log_event = train_cfg, where, kept, log_event
        self._first_bad = torch.tensor([-1.0, 0.0], dtype=torch.float64, device=device)  # [step, loss]; -1: none

    def watch(self, loss: torch.Tensor, step: int) -> None:
        """Remember ``loss`` of (1-based) ``step`` if it is the first non-finite one, on the device (no sync)."""
        bad = torch.isfinite(loss).logical_not() & (self._first_bad[0] < 0)
        # new_full fills on the device; new_tensor would copy from the host, and wait for the GPU to do it.
        seen = torch.stack([loss.new_full((), step, dtype=torch.float64), loss.detach().double()])
        self._first_bad.copy_(torch.where(bad, seen, self._first_bad))

    def check(self) -> None:
        """Stop the run if a watched step had a non-finite loss."""
        step, value = self._first_bad.tolist()
        if step >= 0:
            self.stop_on_bad_loss(int(step), value)

    def stop_on_bad_loss(self, step: int, value: float) -> None:
        where = f"{self.where(step)}: loss is {value}"
        self.log_event(Stopped(step=step, reason=where))
        raise TrainingStopped(
            f'{where}; the run stopped, {self.kept()}. Lower optim.lr, or set train.nan_policy="skip" to skip such '
            "batches."
        )

    @staticmethod
    def gradients_finite(parameters) -> torch.Tensor:
        """A device bool: every gradient finite (a finite loss can still overflow one)."""
        grads = [q.grad for q in parameters if q.grad is not None]
        return torch.stack(torch._foreach_norm(grads)).isfinite().all()

    def skip(self, progress, why: str) -> None:
        """Count a skipped step (nan_policy "skip"); stop the run once skipping is the rule, not the exception."""
        p, t = progress, self.cfg
        where = f"{self.where(p.step + 1)}: {why}"
        self.log_event(SkippedStep(step=p.step + 1, reason=where))
        p.skipped_steps += 1
        p.skipped_in_a_row += 1
        p.step += 1
        too_many = p.skipped_steps >= t.skip_limit and p.skipped_steps > t.skip_fraction * p.step
        if p.skipped_in_a_row >= t.skip_limit or too_many:
            self.log_event(Stopped(step=p.step, reason=where))
            raise TrainingStopped(
                f"{where}; {p.skipped_in_a_row} steps skipped in a row and {p.skipped_steps} of {p.step} in all "
                f"(limits: train.skip_limit = {t.skip_limit} in a row, train.skip_fraction = {t.skip_fraction} of "
                f"all steps), so the run stopped; {self.kept()}. Lower optim.lr."
            )

    def check_weights(self, model: torch.nn.Module, step: int, what: str, where: str | None = None) -> None:
        """No non-finite weight ever reaches a file (``what``): a run whose weights broke stops instead."""
        tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
        if bool(torch.stack([t.isfinite().all() for t in tensors]).all()):
            return
        where = where or self.where(step)
        self.log_event(Stopped(step=step, reason=f"{where}: weights not finite"))
        raise TrainingStopped(
            f"{where}: the weights are not finite, so {what} was not written; {self.kept()}. Lower optim.lr."
        )

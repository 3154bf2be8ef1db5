"""The CGaP training recipe: setup(), train(), evaluate(), save_checkpoint(), cleanup().

One loop trains the model; after each backward the saliency tracker folds the step's statistics into
its EMA; where the schedule has a decision due, it reads scores and validation accuracy and may return
a WidthChange, which surgery applies in place before the model is compiled again.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch

from . import runfolder, signals
from .cgap import SaliencyTracker, Schedule, Structure, WidthChange
from .checkpoint import (
    CheckpointError,
    CheckpointWriter,
    atomic_save,
    atomic_write_text,
    load_checkpoint,
    to_host,
    validate_checkpoint,
)
from .compile import CompiledModel
from .data import DataError, Dataset, load_dataset, make_batches
from .distributed import World, all_reduce_mean_, any_rank, broadcast_value, init_from_env, shutdown, verify_identical
from .environment import resolve_device  # noqa: F401 — the trainer's public helper since the first release
from .health import Health, TrainingStopped
from .models import ModelSpec, SizeOracle, build_model, spec_from_recipe, starting_widths
from .recipe import Recipe, RecipeError, build_recipe, to_toml
from .runstate import Progress, checkpoint_state, restore
from .runstate import summary as run_summary
from .signals import Interrupted
from .step import GraphedStep, LearningRate, TrainStep, evaluate, graphable_optimizer
from .telemetry import JsonlSink, StdoutSink, Telemetry
from .telemetry.events import CheckpointSaved, Evaluated, Finished, PhaseChanged, Started

__all__ = ["CGaPRecipe", "Interrupted", "Progress", "TrainingStopped"]


class CGaPRecipe:
    """A CGaP (or baseline) run from a validated recipe into a run folder."""

    def __init__(
        self,
        recipe: Recipe,
        out_dir: Path,
        *,
        dashboard: bool = False,
        resume: bool = False,
        recipe_name: str = "recipe",
        latch: signals.SignalLatch | None = None,
    ):
        self.recipe, self.out_dir, self.want_dashboard = recipe, Path(out_dir), dashboard
        self.resume, self.recipe_name = resume, recipe_name
        # Records SIGINT/SIGTERM; checked between set-up stages and at every step boundary. The command line
        # passes its own, so that a signal that arrived before the run is not lost.
        self.latch = latch or signals.SignalLatch()
        self._stop_requested = False
        self._previous_handlers: dict | None = None
        self.world = World()
        self.folder = runfolder.RunFolder(self.out_dir)
        self.writer = CheckpointWriter()  # checkpoints go to disk on a thread of their own
        self.finished = False

    # ------------------------------------------------------------------------------------------ setup

    def setup(self) -> None:
        """Check and load everything first; only then create (or take) the run folder and write to it.

        Raises RecipeError (the recipe cannot run on this data), DataError, CheckpointError or
        RunFolderError with a message for the user; nothing is left in the folder when one is raised.
        """
        self._previous_handlers = signals.install(self.latch)
        r = self.recipe
        self.latch.check()
        self.world, self.device = init_from_env(r.train.device)
        state = None
        if self.resume:
            if self.world.is_main:
                self.folder.open_for_resume()
            path = self.out_dir / "checkpoint.pt"
            state = validate_checkpoint(load_checkpoint(path), path)
            self._check_same_recipe(state)
        if r.data.batch_size % self.world.size:
            raise RecipeError(
                [
                    f"data.batch_size: expected a global batch that divides evenly over the {self.world.size} ranks, "
                    f"got {r.data.batch_size}"
                ]
            )
        torch.manual_seed(r.run.seed)
        self.data: Dataset = load_dataset(r.data)
        self.latch.check()
        num_classes = r.model.num_classes or self.data.num_classes
        if num_classes < self.data.num_classes:
            raise RecipeError(
                [
                    f"model.num_classes: expected 0 (from the data) or at least the {self.data.num_classes} classes of "
                    f"{self.data.name}, got {r.model.num_classes}"
                ]
            )
        try:
            self.spec: ModelSpec = spec_from_recipe(r.model, num_classes, self.data.in_channels, self.data.image_size)
        except ValueError as err:
            raise RecipeError([str(err)]) from None
        self.train_split, self.val_split, self.test_split = (
            s.to(self.device) for s in (self.data.train, self.data.val, self.data.test)
        )
        self.sizes = SizeOracle(self.spec)
        self.widths_full = self.spec.full_widths()
        self.params_full, self.macs_full = self.sizes(self.widths_full)
        try:
            self.widths_seed = starting_widths(self.widths_full, r.cgap.seed_fraction, r.model.round_to, r.model.widths)
        except ValueError as err:
            raise RecipeError(str(err).splitlines()) from None

        widths = state["widths"] if state else self.widths_seed
        self.model = build_model(self.spec, widths, device=self.device)
        if r.train.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.graphs = self._use_cuda_graphs()
        self.optimizer = self._make_optimizer()
        self.batches = make_batches(
            self.train_split,
            r.data.batch_size,
            self.data.mean,
            self.data.std,
            augment=self.data.augment,
            shuffle=True,
            drop_last=True,
            seed=r.run.seed,
            shard=(self.world.rank, self.world.size),
            channels_last=r.train.channels_last,
        )
        if len(self.batches) == 0:
            raise DataError(
                f"data.batch_size: expected at most the {len(self.train_split)} training images of {self.data.name} "
                f"(no full batch to train on), got {r.data.batch_size}"
            )
        self.tracker = SaliencyTracker(
            self.model,
            r.cgap.importance.criterion,
            r.cgap.importance.momentum,
            r.cgap.importance.every,
            newborn=r.cgap.importance.newborn,
        )
        self.schedule = Schedule(
            r.cgap,
            steps_per_epoch=len(self.batches),
            epochs=r.train.epochs,
            full_widths=self.widths_full,
            round_to=r.model.round_to,
            params_of=self.sizes.params,
            seed=r.run.seed,
        )
        self.structure = Structure(
            self.model,
            self.optimizer,
            self.tracker,
            self.sizes,
            params_full=self.params_full,
            channels_last=r.train.channels_last,
        )
        self.latch.check()
        self.progress = Progress()
        self._restored_compile: dict[str, Any] = {}  # compile counts of the run's earlier processes
        self._validated: tuple[tuple[int, int], float] | None = None  # ((step, changes), accuracy)
        self.lr = LearningRate(r.optim, self.schedule.total_steps, len(self.batches))
        if state:
            self.progress, self._restored_compile = restore(self, state, self.out_dir / "checkpoint.pt")
            if self.graphs:  # the saved groups hold a plain learning rate and flags: the capturable form again
                self._graphable_groups()

        sinks = []
        if self.world.is_main:  # only rank 0 writes the run folder and talks to the user
            if not self.resume:
                self.latch.check()  # the last point at which stopping leaves no folder
                self.folder.open_new()
            atomic_write_text(to_toml(r), self.out_dir / "recipe.toml")
            # Resumed: what was logged after the checkpoint is logged again from it, so it is cut off first.
            keep = state.get("metrics_bytes") if state else None
            sinks.append(JsonlSink(self.out_dir / "metrics.jsonl", append=self.resume, truncate_to=keep))
            if self.want_dashboard:
                from .telemetry.dashboard import Dashboard

                sinks.append(Dashboard(refresh_per_second=r.dashboard.refresh_per_second))
            else:
                sinks.append(StdoutSink())
        self.telemetry = Telemetry(sinks)
        self.health = Health(
            r.train, self.device, where=self._where, kept=self._kept_checkpoint, log_event=self.telemetry.log_event
        )
        self.compiled = CompiledModel(
            self._wrap(),
            r.compile,
            self.telemetry.log_event,
            steps_left=lambda: self.schedule.steps_until_next_change(self.progress.step),
        )
        self.step = TrainStep(
            self.compiled,
            self.optimizer,
            self.tracker,
            device_type=self.device.type,
            precision=r.train.precision,
            label_smoothing=r.train.label_smoothing,
        )
        self.graphed = GraphedStep(self.step, self.model) if self.graphs else None
        self._graph_compiled: bool | None = None  # whether the captured graph runs compiled code
        self.telemetry.log_event(
            Started(
                resumed=state is not None,
                step=self.progress.step,
                device=str(self.device),
                world_size=self.world.size,
                recipe=self.recipe_name,
                data=self.data.name + (" (synthetic)" if self.data.synthetic else ""),
                widths=self.model.widths,
                widths_full=self.widths_full,
                widths_seed=self.widths_seed,
                params=self.params,
                params_full=self.params_full,
                macs=self.macs,
                macs_full=self.macs_full,
                phase=self.schedule.phase.value,
                total_steps=self.schedule.total_steps,
                steps_per_epoch=len(self.batches),
                epochs=r.train.epochs,
                fixed=dict(getattr(self.model, "fixed", {})),
            )
        )
        if not state:
            self.structure.record(0)

    @property
    def params(self) -> int:
        return self.structure.params

    @property
    def macs(self) -> int:
        return self.structure.macs

    def _wrap(self) -> torch.nn.Module:
        """The module the training step calls: the raw model, or DDP around it on several ranks."""
        if not self.world.distributed:
            return self.model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.model, device_ids=device_ids)

    def _use_cuda_graphs(self) -> bool:
        """Whether the step runs as a CUDA graph (train.cuda_graphs); "true" where it cannot is a recipe error."""
        r = self.recipe
        why_not = []
        if self.device.type != "cuda":
            why_not.append(f"the device is {self.device}, not CUDA")
        if self.world.distributed:
            why_not.append("the run has several ranks (DDP)")
        if r.train.nan_policy == "skip":
            why_not.append('train.nan_policy "skip" decides between the backward and the optimizer step')
        if r.cgap.importance.every != 1:
            why_not.append("cgap.importance.every is not 1")
        if r.train.cuda_graphs == "true" and why_not:
            raise RecipeError([f"train.cuda_graphs: true, but {'; '.join(why_not)}; expected auto or false"])
        return r.train.cuda_graphs != "false" and not why_not

    def _graphable_groups(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr_tensor
            group["fused" if self.recipe.optim.name == "sgd" else "capturable"] = True

    def _make_optimizer(self) -> torch.optim.Optimizer:
        o = self.recipe.optim
        params = self.model.parameters()
        if self.graphs:
            optimizer, self._lr_tensor = graphable_optimizer(
                o.name, params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, device=self.device
            )
            return optimizer
        if o.name == "sgd":
            return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
        return cls(params, lr=o.lr, weight_decay=o.weight_decay)

    # ------------------------------------------------------------------------------------------ loop

    def train(self) -> dict[str, Any]:
        r, p = self.recipe, self.progress
        started = time.perf_counter() - p.wall_seconds
        window = {
            "loss": torch.zeros((), device=self.device),
            "correct": torch.zeros((), device=self.device),
            "images": 0,
            "time": time.perf_counter(),
        }
        while p.epoch < r.train.epochs:
            for x, y in self.batches.epoch(p.epoch, start=p.batch):
                timed = self.device.type == "cuda" and self.compiled.timing
                if timed:  # a step time that a compile.policy decision rests on: this step's work alone
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                loss, correct = self._train_step(x, y)
                if timed:
                    torch.cuda.synchronize()
                self.compiled.step_finished(time.perf_counter() - t0, p.step)
                p.batch += 1
                if loss is not None:
                    window["loss"] += loss
                    window["correct"] += correct
                    window["images"] += y.numel()
                del loss
                if p.step % r.train.log_every == 0 or self._stop_requested:
                    self.health.check()
                if p.step % r.train.log_every == 0:
                    self._log_window(window)
                if self.schedule.due(p.step):
                    self.health.check()
                    self._decide()
                p.wall_seconds = time.perf_counter() - started
                if self._stop_requested:
                    self.save_checkpoint(background=False)  # on disk before the process exits
                    raise Interrupted(self.latch.signum or signal.SIGTERM)
            self.health.check()
            p.epoch += 1
            p.batch = 0
            p.val_accuracy = self._validation_accuracy()
            self.telemetry.log_event(Evaluated(step=p.step, epoch=p.epoch, val_accuracy=p.val_accuracy))
            p.wall_seconds = time.perf_counter() - started
            if r.checkpoint.every and p.epoch % r.checkpoint.every == 0 or p.epoch == r.train.epochs:
                self.save_checkpoint()
        return self.finish()

    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        p = self.progress
        if not self.model.training:  # train() walks every module: only after an evaluation
            self.model.train()
        if self.graphed is not None:  # the whole step in one replay; the loss is checked as for "stop"
            if self.compiled.use_compiled != self._graph_compiled:  # compile.policy switched: capture that code
                self._graph_compiled = self.compiled.use_compiled
                self.graphed.invalidate()
            self.graphed.set_lr(self.lr(p.step))
            self._stop_requested = self.latch.signum is not None
            loss, logits = self.graphed(x, y, p.step)
            self.health.watch(loss, p.step + 1)
            return self._count_step(loss, logits, y)
        self.lr.apply(self.optimizer, p.step)
        loss, logits = self.step.forward(x, y)
        if self.world.distributed or self.recipe.train.nan_policy == "skip":
            # Decided now, at the cost of a host sync (one small all-reduce on several ranks): the ranks
            # skip, stop or go on together, and a skipped batch never reaches the weights.
            not_finite, self._stop_requested = any_rank(
                [not bool(torch.isfinite(loss)), self.latch.signum is not None], self.world, self.device
            )
        else:
            # One process, nan_policy "stop": remember the first bad step on the device, without waiting
            # for the GPU; check_health() reads it before anything is logged, decided or saved.
            not_finite, self._stop_requested = False, self.latch.signum is not None
            self.health.watch(loss, p.step + 1)
        if not_finite:
            if self.recipe.train.nan_policy == "stop":
                self.health.stop_on_bad_loss(p.step + 1, loss.item())
            self.health.skip(p, f"loss is {loss.item()}")
            return None, None
        self.step.backward(loss)
        if self.recipe.train.nan_policy == "skip":
            finite = self.health.gradients_finite(self.model.parameters())
            (not_finite,) = any_rank([not bool(finite)], self.world, self.device)
            if not_finite:  # a finite loss can still overflow a gradient: such a step never reaches the weights
                self.optimizer.zero_grad(set_to_none=False)
                self.health.skip(p, "gradients are not finite")
                return None, None
        self.step.update(p.step)
        return self._count_step(loss, logits, y)

    def _count_step(self, loss, logits, y) -> tuple[torch.Tensor, torch.Tensor]:
        """A step that reached the weights: counters, and its (summed loss, correct) for the log window (device
        tensors, computed now: a graph replay overwrites ``loss`` and ``logits``)."""
        p = self.progress
        p.skipped_in_a_row = 0
        p.step += 1
        batch = y.numel() * self.world.size  # the global batch
        p.train_macs += 3 * self.macs * batch  # forward + backward ≈ 3 × forward MACs
        p.train_macs_dense += 3 * self.macs_full * batch
        return loss.detach() * y.numel(), (logits.detach().argmax(1) == y).sum()

    def _kept_checkpoint(self) -> str:
        checkpoint = self.out_dir / "checkpoint.pt"
        if checkpoint.is_file():
            return f"the last good checkpoint is {checkpoint} (resume with --resume {self.out_dir})"
        return "no checkpoint was written before it"

    def _where(self, step: int) -> str:
        """A step, for messages: its epoch and phase (phases change only in _decide, after a health check), and
        on several ranks that any of them may be the one."""
        where = f"step {step} (epoch {max(0, step - 1) // len(self.batches)}, phase {self.schedule.phase})"
        return where + (f" (on rank {self.world.rank}, or another rank)" if self.world.distributed else "")

    def _log_window(self, window: dict) -> None:
        p = self.progress
        now = time.perf_counter()
        images = max(1, window["images"])
        metrics = {
            "step": p.step,
            "epoch": p.step / len(self.batches),
            "phase": self.schedule.phase,
            "loss": float(window["loss"]) / images,
            "train_accuracy": float(window["correct"]) / images,
            "val_accuracy": p.val_accuracy,
            "lr": float(self.optimizer.param_groups[0]["lr"]),
            "images_per_second": window["images"] * self.world.size / max(1e-9, now - window["time"]),
            "params": self.params,
            "macs": self.macs,
            "peak_params": self.structure.peak_params,
            "widths": self.model.widths,
            "train_macs": p.train_macs,
            "compiled": self.compiled.active,
            "saliency_spread": self._saliency_spread(),
            "twin_fraction": self.structure.twin_fractions(),
        }
        self.telemetry.log_metrics(metrics)
        self.compiled.check_fallbacks(p.step)
        window.update(loss=window["loss"] * 0, correct=window["correct"] * 0, images=0, time=now)

    def _saliency_spread(self) -> dict[str, list[float]]:
        """Per group, the 10th, 50th and 90th percentiles of the layer-normalised saliency S / mean(S)."""
        scores = self.tracker.scores()
        if not scores:
            return {}
        levels = torch.tensor([0.1, 0.5, 0.9]).to(next(iter(scores.values())).device, non_blocking=True)
        quantiles = [torch.quantile((s / s.mean().clamp(min=1e-30)).float(), levels) for s in scores.values()]
        rows = torch.stack(quantiles).tolist()  # one read from the device for every group
        return {name: [round(v, 4) for v in row] for name, row in zip(scores, rows)}

    def _decide(self) -> None:
        p = self.progress
        val_accuracy = self._validation_accuracy()
        p.val_accuracy = val_accuracy
        before = self.model.widths
        phase_before = self.schedule.phase
        all_reduce_mean_(list(self.tracker.buffers.values()), self.world)
        decision = self.schedule.decide(p.step, before, self.tracker.scores(), val_accuracy)
        if self.world.distributed:
            change = decision.change
            groups = {k: (c.index, c.new) for k, c in change.groups.items()} if change else None
            verify_identical(
                [p.step, before, self.schedule.phase, groups], f"the decision at step {p.step}", self.world
            )
        if decision.change is not None:
            self._apply(decision.change)
        for event in decision.events:
            self.telemetry.log_event(event)
            if isinstance(event, PhaseChanged):
                p.phases.append({"step": event.step, "phase": event.to})
        if self.schedule.phase != phase_before:
            if decision.change is None:
                self.compiled.reconsider(self.schedule.steps_until_next_change(p.step))
            self.save_checkpoint()

    def _apply(self, change: WidthChange) -> None:
        p = self.progress
        if self.world.distributed:
            # DDP's reducer keeps each parameter's gradient accumulator alive, with the old shape baked in:
            # the old wrapper must be gone before surgery, or the next backward fails on the stale shapes.
            self.compiled.raw = self.model
            self.compiled.invalidate("before surgery")
            gc.collect()
        if self.graphed is not None:  # its addresses are the old tensors': captured again at the next step
            self.graphed.invalidate()
        started = time.perf_counter()
        self.telemetry.log_event(self.structure.apply(change, step=p.step, epoch=p.step / len(self.batches)))
        p.change_seconds += time.perf_counter() - started
        if self.world.distributed:  # DDP's buckets hold the old shapes: wrap the changed module afresh
            self.compiled.raw = self._wrap()
        noun = "growth" if change.kind == "grow" else "pruning"
        self.compiled.invalidate(
            f"after {noun} step {self.structure.counts[change.kind]}", self.schedule.steps_until_next_change(p.step)
        )

    def _validation_accuracy(self) -> float:
        """Validation accuracy that every rank agrees on (rank 0's BN statistics and result).

        A decision that falls on an epoch's last step has just measured the same model: reused then.
        """
        key = (self.progress.step, self.schedule.changes)
        if self._validated is not None and self._validated[0] == key:
            return self._validated[1]
        if self.world.distributed:
            for buffer in self.model.buffers():
                torch.distributed.broadcast(buffer, src=0)
        accuracy = broadcast_value(self.evaluate(self.val_split)[0], self.world)
        self._validated = (key, accuracy)
        return accuracy

    def evaluate(self, split) -> tuple[float, float]:
        """(accuracy, mean loss) of the raw model in eval mode."""
        batches = make_batches(
            split,
            max(256, self.recipe.data.batch_size * 2),
            self.data.mean,
            self.data.std,
            channels_last=self.recipe.train.channels_last,
        )
        correct, total_loss, _ = evaluate(self.model, batches, self.step.autocast)
        n = max(1, len(split))
        return float(correct) / n, float(total_loss) / n

    # ------------------------------------------------------------------------------------------ saving

    def _check_finite_weights(self, what: str) -> None:
        p = self.progress
        self.health.check_weights(
            self.model, p.step, what, f"step {p.step} (epoch {p.epoch}, phase {self.schedule.phase})"
        )

    def save_checkpoint(self, *, background: bool = True) -> None:
        """Write checkpoint.pt. ``background``: a host copy of the state is taken now and written (serialised,
        fsynced, renamed into place) on the writer's thread while training goes on; a failed write stops the run
        at the next checkpoint or at the end, the previous checkpoint unchanged."""
        self.health.check()  # never save weights that a non-finite loss has already touched
        self._check_finite_weights("the checkpoint")
        if not self.world.is_main:
            return
        p = self.progress
        self._checkpoint_written()  # one host copy at a time, and the last write's failure reported
        self.telemetry.flush()
        # metrics.jsonl up to here belongs to this checkpoint; a resume cuts off what came after.
        state = checkpoint_state(self, _file_size(self.out_dir / "metrics.jsonl"))
        path = self.out_dir / "checkpoint.pt"
        try:
            if background:
                self.writer.submit(to_host(state), path)
            else:
                atomic_save(state, path)
        except OSError as err:  # a full disk, say: the run cannot go on, and the user's input was fine
            raise self._write_failed(path, err) from None
        self.telemetry.log_event(CheckpointSaved(step=p.step, path=str(path)))

    def _checkpoint_written(self) -> None:
        """Wait for the checkpoint being written in the background; a failed write stops the run."""
        try:
            self.writer.wait()
        except OSError as err:
            raise self._write_failed(self.writer.path, err) from None

    @staticmethod
    def _write_failed(path, err: OSError) -> TrainingStopped:
        return TrainingStopped(
            f"{path}: could not be written ({err.strerror or err}); the previous checkpoint, if any, is unchanged"
        )

    def _check_same_recipe(self, state: dict) -> None:
        try:
            same = build_recipe(state["recipe"], "checkpoint") == self.recipe
        except RecipeError:
            same = False
        if not same:
            raise CheckpointError(
                f"{self.out_dir / 'checkpoint.pt'}: written by a different recipe; resume with the run's own "
                "recipe.toml (or --resume RUN_DIR alone)"
            )
        self.recipe_name = state.get("recipe_name", self.recipe_name)

    def finish(self) -> dict[str, Any]:
        p = self.progress
        self._checkpoint_written()
        self._check_finite_weights("model.pt")
        test_accuracy, test_loss = self.evaluate(self.test_split)
        model_file = {
            "spec": self.spec.to_dict(),
            "widths": self.model.widths,
            "state_dict": self.model.state_dict(),
            "mean": list(self.data.mean),
            "std": list(self.data.std),
        }
        if self.world.is_main:
            atomic_save(model_file, self.out_dir / "model.pt")
        summary = run_summary(self, test_accuracy, test_loss, self._restored_compile)
        if self.world.distributed:
            verify_identical([self.model.widths, summary["train_macs"]], "the final model", self.world)
            # One write per line: the ranks share the terminal, and print() would split line and newline.
            sys.stderr.write(f"[rank {self.world.rank}] final widths {json.dumps(self.model.widths)}\n")
            sys.stderr.flush()
        if not self.world.is_main:
            return summary
        atomic_write_text(json.dumps(summary, indent=2) + "\n", self.out_dir / "summary.json")
        self.telemetry.log_event(
            Finished(
                step=p.step,
                test_accuracy=test_accuracy,
                params=self.params,
                params_reduction=summary["params_reduction"],
            )
        )
        try:
            from .telemetry.report import plot_growth

            plot_growth(self.out_dir, self.structure.trajectory, p.phases, self.widths_full)
        except ImportError as err:  # matplotlib missing: the run is still complete
            print(f"growth.png skipped: {err}", file=sys.stderr)
        self.finished = True
        return summary

    def cleanup(self) -> None:
        """Close the sinks, release the folder; a run that never reached a checkpoint leaves nothing behind."""
        try:  # the folder is judged by its checkpoint: the one being written lands first
            self.writer.wait()
        except OSError as err:  # the run is ending on another error already: say this one too
            print(f"{self.writer.path}: could not be written ({err.strerror or err})", file=sys.stderr)
        telemetry = getattr(self, "telemetry", None)
        if telemetry is not None:
            telemetry.close()
        self.folder.close(finished=self.finished)
        shutdown()
        if self._previous_handlers is not None:
            signals.restore(self._previous_handlers)
            self._previous_handlers = None


def _file_size(path: Path) -> int | None:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None

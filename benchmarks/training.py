"""Training cost: step time by width, eager against compiled; the cost of one structural change; and whole
CGaP runs against the dense baseline at equal epochs (wall time and ``train_macs``).

Step time is one full trainer step as ``CGaPRecipe`` runs it: forward, cross-entropy, backward, the saliency
update (one ``channel_stats`` call with its EMA) and the SGD step. Widths: the seed (a quarter of full,
rounded), the peak (full width: growth is capped there) and a final width list (see :func:`final_widths`).

A structural change costs the surgery (``apply_width_change`` on weights, BN, consumers, SGD momentum and
saliency) plus, compiled, the recompile: ``torch.compiler.reset()`` and the first compiled step after it,
less a steady compiled step.

Whole runs go through the real command line in a fresh process each (``--no-dashboard``), with a fresh
inductor cache folder so that no run profits from an earlier one's compiled code.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from cgap_triton.cgap import SaliencyTracker, Schedule, WidthChange, apply_width_change
from cgap_triton.models import VGG_CFGS, ModelSpec, SizeOracle, build_model, round_up, seed_widths
from cgap_triton.recipe import Recipe
from cgap_triton.step import TrainStep

from .common import REPO_ROOT, median_seconds

SUMMARY_FIELDS = (
    "test_accuracy",
    "params",
    "params_full",
    "params_reduction",
    "macs_reduction",
    "structural_changes",
    "train_macs",
    "train_macs_dense",
    "train_macs_ratio",
    "wall_seconds",
    "compile_seconds",
    "recompiles",
    "compile_fallbacks",
    "steps",
    "widths",
)


# ------------------------------------------------------------------------------------------- whole runs


class RunFailed(RuntimeError):
    """A benchmarked training run exited with an error; the message carries its last lines of stderr."""


def run_recipe(recipe: str | Path, overrides: list[str], *, timeout: float = 3600) -> dict[str, Any]:
    """Train ``recipe`` through the CLI in a fresh process; its summary fields and the process wall time."""
    with tempfile.TemporaryDirectory(prefix="cgap-bench-") as tmp:
        out = Path(tmp) / "run"
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(Path(tmp) / "inductor"), "MPLBACKEND": "Agg"}
        command = [sys.executable, "-m", "cgap_triton", "recipe", str(recipe), *overrides]
        command += ["--no-dashboard", "--out", str(out)]
        started = time.perf_counter()
        proc = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        process_seconds = time.perf_counter() - started
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise RunFailed(f"{' '.join(command)}\nexited with status {proc.returncode}:\n{tail}")
        summary = json.loads((out / "summary.json").read_text())
    return {"process_seconds": process_seconds, **{k: summary.get(k) for k in SUMMARY_FIELDS}}


def cgap_vs_dense(epochs: int | None, *, device: str = "cpu") -> list[dict[str, Any]]:
    """The quickstart CGaP recipe against its dense baseline, same data, schedule and epochs."""
    overrides = [f"train.device={json.dumps(device)}"]
    if epochs is not None:
        overrides.append(f"train.epochs={epochs}")
    rows = []
    for name in ("quickstart", "quickstart_dense"):
        print(f"  training recipes/{name}.toml ({' '.join(overrides)}) ...", flush=True)
        result = run_recipe(REPO_ROOT / "recipes" / f"{name}.toml", overrides)
        rows.append({"recipe": name, "device": device, "epochs": epochs or "recipe", **result})
    dense = rows[1]
    for row in rows:
        row["wall_vs_dense"] = row["wall_seconds"] / dense["wall_seconds"]
        row["train_macs_vs_dense"] = row["train_macs"] / dense["train_macs"]
    return rows


# ------------------------------------------------------------------------------------------- step time


@dataclass(frozen=True)
class Workload:
    """A model family and the input of one training step."""

    name: str
    spec: ModelSpec
    batch_size: int
    round_to: int
    target_reduction: float  # params reduction of the final widths

    def widths(self) -> dict[str, dict[str, int]]:
        full = self.spec.full_widths()
        return {
            "seed": seed_widths(full, 0.25, self.round_to),
            "peak": full,
            "final": final_widths(self.spec, self.target_reduction, self.round_to),
        }


def vgg19_cifar100(batch_size: int = 128) -> Workload:
    spec = ModelSpec("vgg", 100, 3, 32, tuple(VGG_CFGS["vgg19"]))
    return Workload("vgg19-cifar100", spec, batch_size, round_to=8, target_reduction=0.789)


def quickstart_digits(batch_size: int = 32) -> Workload:
    spec = ModelSpec("vgg", 10, 1, 8, (32, 32, "M", 64, 64, "M", 128, 128))
    return Workload("quickstart-digits", spec, batch_size, round_to=4, target_reduction=0.75)


def depth_profile(n: int) -> list[float]:
    """Keep-fractions that fall with depth from 0.6 to 0.15, the usual shape of a pruned VGG (later, wider
    layers are the most redundant); scaled by :func:`final_widths` to the params target."""
    return [0.6 - 0.45 * i / max(1, n - 1) for i in range(n)]


def final_widths(spec: ModelSpec, target_reduction: float, round_to: int) -> dict[str, int]:
    """A stand-in for the widths a CGaP run ends at: :func:`depth_profile` scaled (by bisection) so the
    params fall by ``target_reduction``, each width rounded up to ``round_to``. A real run's widths
    (``summary.json``) can replace it through ``--final-widths``."""
    oracle = SizeOracle(spec)
    full = spec.full_widths()
    params_full = oracle.params(full)
    profile = depth_profile(len(full))

    def widths_at(scale: float) -> dict[str, int]:
        return {
            name: min(width, max(round_to, round_up(width * min(1.0, f * scale), round_to)))
            for (name, width), f in zip(full.items(), profile)
        }

    lo, hi = 0.0, 1.0 / min(profile)
    for _ in range(50):
        mid = (lo + hi) / 2
        if 1 - oracle.params(widths_at(mid)) / params_full >= target_reduction:
            lo = mid
        else:
            hi = mid
    return widths_at(lo)


class Trainer:
    """One model with its SGD optimizer and saliency tracker, stepping through the trainer's own ``TrainStep``."""

    def __init__(self, workload: Workload, widths: dict[str, int], device: torch.device, seed: int = 0):
        torch.manual_seed(seed)
        spec = workload.spec
        self.model = build_model(spec, widths, device=device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        self.tracker = SaliencyTracker(self.model, "taylor", 0.9)
        shape = (workload.batch_size, spec.in_channels, spec.image_size, spec.image_size)
        self.x = torch.randn(shape, device=device)
        self.y = torch.randint(0, spec.num_classes, (workload.batch_size,), device=device)
        self.train_step = TrainStep(self.model, self.optimizer, self.tracker, device_type=device.type)
        self.steps = 0

    def compile(self, backend: str) -> None:
        torch.compiler.reset()
        self.train_step.model = torch.compile(self.model, backend=backend)

    def eager(self) -> None:
        self.train_step.model = self.model

    def step(self) -> None:
        self.train_step(self.x, self.y, self.steps)
        self.steps += 1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def step_times(
    workload: Workload, device: torch.device, backends: list[str], *, repeat: int = 5
) -> list[dict[str, Any]]:
    """Seconds per training step and images/s at seed, peak and final widths, eager and per compile backend;
    ``compile_seconds`` is the first compiled step less a steady one."""
    rows = []
    oracle = SizeOracle(workload.spec)
    for stage, widths in workload.widths().items():
        trainer = Trainer(workload, widths, device)
        params, macs = oracle(widths)
        for mode in ["eager", *backends]:
            compile_seconds = None
            if mode == "eager":
                trainer.eager()
            else:
                trainer.compile(mode)
                first = timed(trainer.step, device)
            seconds = median_seconds(trainer.step, device, warmup=2, repeat=repeat)
            if mode != "eager":
                compile_seconds = max(0.0, first - seconds)
            rows.append(
                {
                    "workload": workload.name,
                    "stage": stage,
                    "mode": mode,
                    "params": params,
                    "macs_per_image": macs,
                    "step_ms": seconds * 1e3,
                    "images_per_s": workload.batch_size / seconds,
                    "compile_s": compile_seconds,
                }
            )
            print(f"    {stage:5s} {mode:9s} {seconds * 1e3:9.2f} ms/step", flush=True)
        del trainer
    return rows


def with_noise(change: WidthChange, noise: float) -> WidthChange:
    """``change`` with the relative noise on copied filters that a run's schedule would decide."""
    return WidthChange(change.kind, {k: dataclasses.replace(g, noise=noise) for k, g in change.groups.items()})


def change_cost_plan(workload: Workload, kind: str) -> tuple[dict[str, int], Callable]:
    """Widths before a typical change of ``kind`` and the real schedule's planner for it: growth from the
    seed at rate 0.25, pruning at full width of 15 % of the units."""
    full = workload.spec.full_widths()
    defaults = Recipe().cgap
    # target_reduction out of reach: the planner takes a full step_fraction instead of trimming to a target
    prune = dataclasses.replace(defaults.prune, step_fraction=0.15, target_reduction=0.95)
    schedule = Schedule(
        dataclasses.replace(defaults, seed_fraction=0.25, prune=prune),
        steps_per_epoch=100,
        epochs=10,
        full_widths=full,
        round_to=workload.round_to,
        params_of=SizeOracle(workload.spec).params,
    )
    if kind == "grow":
        return seed_widths(full, 0.25, workload.round_to), schedule.plan_growth
    return full, schedule.plan_pruning


def change_cost(workload: Workload, device: torch.device, backend: str | None, *, repeat: int = 5) -> list[dict]:
    """Cost of one typical growth step (seed width, rate 0.25) and one typical pruning step (peak width,
    15 % of the units), as the trainer applies them: planned by the real schedule from real saliency."""
    rows = []
    for kind in ("grow", "prune"):
        widths, plan = change_cost_plan(workload, kind)
        trainer = Trainer(workload, widths, device)
        if backend:
            trainer.compile(backend)
        for _ in range(3):  # momentum buffers and saliency exist, the compiled code is warm
            trainer.step()
        before_step = median_seconds(trainer.step, device, warmup=0, repeat=repeat)
        scores = trainer.tracker.scores()
        change = plan(trainer.model.widths, scores)
        units = sum(abs(c.width - widths[name]) for name, c in change.groups.items())

        surgery = partial(
            apply_width_change,
            trainer.model,
            with_noise(change, 0.01),
            optimizer=trainer.optimizer,
            saliency=trainer.tracker.buffers,
        )
        surgery_seconds = timed(surgery, device)
        recompile_seconds = None
        if backend:
            trainer.compile(backend)
            first = timed(trainer.step, device)
            after_step = median_seconds(trainer.step, device, warmup=1, repeat=repeat)
            recompile_seconds = max(0.0, first - after_step)
        else:
            after_step = median_seconds(trainer.step, device, warmup=1, repeat=repeat)
        rows.append(
            {
                "workload": workload.name,
                "change": kind,
                "mode": backend or "eager",
                "units_changed": units,
                "surgery_ms": surgery_seconds * 1e3,
                "recompile_s": recompile_seconds,
                "step_ms_before": before_step * 1e3,
                "step_ms_after": after_step * 1e3,
                "change_in_steps": (surgery_seconds + (recompile_seconds or 0.0)) / after_step,
            }
        )
        print(
            f"    {kind:5s} {backend or 'eager':9s} surgery {surgery_seconds * 1e3:8.2f} ms"
            + (f", recompile {recompile_seconds:7.2f} s" if backend else ""),
            flush=True,
        )
        del trainer
    return rows

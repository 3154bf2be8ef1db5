"""What a run keeps: its progress counters, the checkpoint assembled from its owners, and the summary.

Each owner (optimizer, saliency tracker, schedule, structure, compiled step) saves and loads its own state;
this module only puts them side by side in the checkpoint (format 2: the structure's history under
"structure"; format 1 kept it in the progress counters and still loads) and writes ``summary.json``'s fields,
a contract other code reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointError

FORMAT = 2


@dataclass
class Progress:
    """Everything the loop counts; saved in checkpoints."""

    step: int = 0
    epoch: int = 0
    batch: int = 0  # batches done within ``epoch``
    train_macs: int = 0
    train_macs_dense: int = 0
    skipped_steps: int = 0
    skipped_in_a_row: int = 0
    val_accuracy: float = 0.0
    phases: list[dict] = field(default_factory=list)  # phase boundaries
    wall_seconds: float = 0.0
    change_seconds: float = 0.0  # wall time inside structural changes (surgery, state carried)


def checkpoint_state(run, metrics_bytes: int | None) -> dict[str, Any]:
    """The checkpoint of ``run`` (a trainer after setup); ``metrics_bytes``: metrics.jsonl's size at this point,
    which a resume cuts the file back to."""
    p = run.progress
    return {
        "format": FORMAT,
        "recipe": run.recipe.to_dict(),
        "recipe_name": run.recipe_name,
        "spec": run.spec.to_dict(),
        "widths": run.model.widths,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "saliency": run.tracker.state_dict(),
        "schedule": run.schedule.state_dict(),
        "structure": run.structure.state_dict(),
        "progress": {k: getattr(p, k) for k in p.__dataclass_fields__},
        "compile": run.compiled.state(),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if run.device.type == "cuda" else [],
        },
        "metrics_bytes": metrics_bytes,
    }


def restore(run, state: dict, path: Path) -> tuple[Progress, dict]:
    """Load ``state`` into ``run``'s owners; returns the progress and the compile counts of earlier processes.
    Raises CheckpointError naming ``path`` when the state does not fit the run's model and recipe."""
    try:
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.tracker.load_state_dict(state["saliency"])
        run.schedule.load_state_dict(dict(state["schedule"]))
        progress = dict(state["progress"])
        structure = state.get("structure") or {  # format 1 kept these in progress
            "peak_params": progress.pop("peak_params"),
            "counts": progress.pop("change_counts"),
            "trajectory": progress.pop("trajectory"),
        }
        run.structure.load_state_dict(structure)
        restored = Progress(**progress)
        torch.set_rng_state(state["rng"]["torch"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"{path}: does not match this run's model and recipe "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else err!r})"
        ) from None
    if run.device.type == "cuda" and len(state["rng"]["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return restored, state["compile"]


def summary(run, test_accuracy: float, test_loss: float, prior_compile: dict) -> dict[str, Any]:
    """``summary.json``'s fields for ``run`` at its end (``prior_compile``: counts of earlier processes)."""
    p, structure = run.progress, run.structure
    graphed = getattr(run, "graphed", None)  # the CUDA-graph step, where the run has one
    return {
        "recipe": run.recipe_name,
        "data": run.data.name,
        "synthetic_data": run.data.synthetic,
        "test_accuracy": test_accuracy,
        "test_loss": test_loss,
        "val_accuracy": p.val_accuracy,
        "params": structure.params,
        "macs": structure.macs,
        "params_full": run.params_full,
        "macs_full": run.macs_full,
        "params_reduction": 1 - structure.params / run.params_full,
        "macs_reduction": 1 - structure.macs / run.macs_full,
        "peak_params": structure.peak_params,
        "params_seed": run.sizes.params(run.widths_seed),
        "widths": run.model.widths,
        "widths_full": run.widths_full,
        "widths_seed": run.widths_seed,
        "twin_fraction": structure.twin_fractions(),
        "structural_changes": run.schedule.changes,
        "growth_steps": structure.counts.get("grow", 0),
        "pruning_steps": structure.counts.get("prune", 0),
        "train_macs": p.train_macs,
        "train_macs_dense": p.train_macs_dense,
        "train_macs_ratio": p.train_macs / max(1, p.train_macs_dense),
        "wall_seconds": p.wall_seconds,
        "compile_seconds": run.compiled.compile_seconds + prior_compile.get("compile_seconds", 0.0),
        "recompiles": run.compiled.compilations + prior_compile.get("compilations", 0),
        "compile_fallbacks": run.compiled.fallbacks + prior_compile.get("fallbacks", 0),
        "structural_change_seconds": p.change_seconds,
        "cuda_graph_captures": graphed.captures if graphed is not None else 0,
        "cuda_graph_capture_seconds": graphed.capture_seconds if graphed is not None else 0.0,
        "cuda_graph_first_step_seconds": graphed.first_step_seconds if graphed is not None else 0.0,
        "skipped_steps": p.skipped_steps,
        "steps": p.step,
        "epochs": run.recipe.train.epochs,
        "device": str(run.device),
        "world_size": run.world.size,
    }

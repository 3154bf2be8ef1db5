"""The trainer's real step, piece by piece: where the host time of one step goes.

``benchmarks.step_modes`` times the bare step; a run also draws and augments each batch, watches the loss and
counts. This sets up the real trainer on a recipe, lets it capture (or warm up), then runs ``steps`` steps
three ways: host time of drawing a batch and of ``_train_step`` with the GPU left to run behind, the wall time
per step with a synchronisation at the end only, and a cProfile of the host side (top functions by own time).
The recipe's first phase is used (seed widths for a CGaP recipe), which is where launch costs weigh most.

    python -m benchmarks.trainer_step                     # CUDA: vgg19_c100 on random CIFAR-100 files
    python -m benchmarks.trainer_step --dry-run           # CPU: shapes_vgg, a few steps, to check it runs
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path

import torch

from .common import forever, synchronize

ROOT = Path(__file__).resolve().parent.parent


def measure(recipe_path: Path, overrides: list[str], steps: int, out: Path) -> dict:
    from cgap_triton.recipe import load_recipe
    from cgap_triton.train import CGaPRecipe

    trainer = CGaPRecipe(load_recipe(recipe_path, overrides), out)
    try:
        trainer.setup()
        device = trainer.device
        batches = forever(trainer.batches)
        for _ in range(8):  # capture or warm-up, then steady steps
            trainer._train_step(*next(batches))
        synchronize(device)
        draw = step = 0.0
        started = time.perf_counter()
        for _ in range(steps):
            t0 = time.perf_counter()
            x, y = next(batches)
            t1 = time.perf_counter()
            trainer._train_step(x, y)
            draw, step = draw + t1 - t0, step + time.perf_counter() - t1
        host = time.perf_counter() - started
        synchronize(device)
        wall = time.perf_counter() - started
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(steps):
            trainer._train_step(*next(batches))
        profile.disable()
        synchronize(device)
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(15)
        batch = trainer.recipe.data.batch_size
        return {
            "recipe": recipe_path.name,
            "device": str(device),
            "graphed": trainer.graphed is not None,
            "batch": batch,
            "widths": dict(trainer.model.widths),
            "draw_us": draw / steps * 1e6,
            "train_step_host_us": step / steps * 1e6,
            "host_us_per_step": host / steps * 1e6,
            "wall_ms_per_step": wall / steps * 1e3,
            "images_per_s": batch * steps / wall,
            "profile": text.getvalue(),
        }
    finally:
        trainer.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.trainer_step", description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, shapes_vgg, a few steps: check that it runs")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("error: needs a CUDA device (or --dry-run)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="trainer-step-") as tmp:  # the random CIFAR files: timing only
        row = _measure(args, Path(tmp))
    print(
        f"{row['recipe']} on {row['device']} (graphed: {row['graphed']}), batch {row['batch']}: draw "
        f"{row['draw_us']:.0f} µs + _train_step {row['train_step_host_us']:.0f} µs of host per step; "
        f"wall {row['wall_ms_per_step']:.2f} ms per step, {row['images_per_s']:.0f} img/s"
    )
    print(row["profile"])
    if args.json:
        args.json.write_text(json.dumps(row, indent=2) + "\n")
    return 0


def recipe_for(dry_run: bool, work: Path, images: tuple[int, int] = (50_000, 10_000)) -> tuple[Path, list[str]]:
    """The recipe these benchmarks run and its overrides: for a dry run, shapes_vgg at a tiny size (CPU); else
    vgg19_c100 on CIFAR-100 files of random pixels (``images``: train and test) written under ``work``, with
    compilation off (the graphed step alone)."""
    if dry_run:
        recipe = ROOT / "recipes" / "shapes_vgg.toml"
        overrides = ["data.shapes_images=300", "data.val_size=50", "data.test_size=50", "data.batch_size=16"]
    else:
        import torchvision.datasets.cifar as cifar

        from .gpu_check import write_cifar100

        cifar.check_integrity = lambda *a, **k: True  # random-pixel files cannot carry the official checksums
        write_cifar100(work / "data", *images)
        recipe = ROOT / "recipes" / "vgg19_c100.toml"
        overrides = [f"data.root={work / 'data'}", "compile.enabled=false"]
    return recipe, [*overrides, "dashboard.enabled=false"]


def _measure(args, work: Path) -> dict:
    recipe, overrides = recipe_for(args.dry_run, work)
    return measure(recipe, overrides, min(args.steps, 4) if args.dry_run else args.steps, work / "run")


if __name__ == "__main__":
    sys.exit(main())

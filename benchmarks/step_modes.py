"""The trainer's real training step three ways: eager, torch.compile, and one CUDA graph per step.

The step is ``cgap_triton.step.TrainStep`` — forward under autocast, cross-entropy, backward, the saliency
tracker's ``channel_stats`` update with its EMA, the optimizer step — on VGG-19 (CIFAR-100 shapes) at full
width, with the optimizer in the form a graph can capture (learning rate a device tensor, SGD fused) for every
mode, so that only the launching differs. ``graphed`` is ``cgap_triton.step.GraphedStep``, as the trainer runs
it with ``train.cuda_graphs``; its first call captures (``setup_s``), as the first compiled call compiles.

    python -m benchmarks.step_modes                      # CUDA: batch 128 and 512, bf16, channels_last
    python -m benchmarks.step_modes --dry-run            # CPU: a tiny VGG, eager and aot_eager, to check it runs
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from cgap_triton.cgap import SaliencyTracker
from cgap_triton.models import VGG_CFGS, ModelSpec, build_model
from cgap_triton.step import GraphedStep, TrainStep, graphable_optimizer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_mode(
    spec: ModelSpec,
    mode: str,
    batch: int,
    device: torch.device,
    *,
    precision: str,
    channels_last: bool,
    steps: int,
    repeat: int,
    backend: str,
) -> dict:
    """Median ms per step over ``repeat`` timed runs of ``steps`` steps, after the first call (capture, compile)
    and two more warm-up steps."""
    torch.manual_seed(0)
    torch.compiler.reset()
    model = build_model(spec, None, device=device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    if device.type == "cuda":
        optimizer = graphable_optimizer(
            "sgd", model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, device=device
        )[0]
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    tracker = SaliencyTracker(model, "taylor", 0.9)
    callable_model = torch.compile(model, backend=backend) if mode == "compiled" else model
    step = TrainStep(callable_model, optimizer, tracker, device_type=device.type, precision=precision)
    run = GraphedStep(step, model) if mode == "graphed" else step
    x = torch.randn(batch, spec.in_channels, spec.image_size, spec.image_size, device=device)
    x = x.contiguous(memory_format=memory_format)
    y = torch.randint(0, spec.num_classes, (batch,), device=device)
    _sync(device)
    started = time.perf_counter()
    run(x, y, 0)
    _sync(device)
    first = time.perf_counter() - started
    for k in range(2):
        run(x, y, 1 + k)
    times = []
    for r in range(repeat):
        _sync(device)
        started = time.perf_counter()
        for k in range(steps):
            run(x, y, 3 + r * steps + k)
        _sync(device)
        times.append((time.perf_counter() - started) / steps)
    seconds = statistics.median(times)
    return {
        "workload": f"vgg19 c100 {precision}" if spec.cfg == tuple(VGG_CFGS["vgg19"]) else f"vgg {spec.cfg}",
        "mode": mode,
        "batch": batch,
        "step_ms": seconds * 1e3,
        "images_per_s": batch / seconds,
        "setup_s": max(0.0, first - seconds),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.step_modes", description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, action="append", help="batch sizes (default 128 and 512)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny model: check that it runs")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.dry_run:
        device = torch.device("cpu")
        spec = ModelSpec("vgg", 10, 3, 8, (8, "M", 16))
        modes, batches, precision, channels_last = ["eager", "compiled"], args.batch or [4], "fp32", False
        steps, repeat, backend = 2, 2, "aot_eager"
    else:
        if not torch.cuda.is_available():
            print("error: needs a CUDA device (or --dry-run)", file=sys.stderr)
            return 2
        device = torch.device("cuda")
        spec = ModelSpec("vgg", 100, 3, 32, tuple(VGG_CFGS["vgg19"]))
        modes, batches, precision, channels_last = (
            ["eager", "compiled", "graphed"],
            args.batch or [128, 512],
            "bf16",
            True,
        )
        steps, repeat, backend = 20, 5, "inductor"
    rows = []
    for batch in batches:
        for mode in modes:
            row = bench_mode(
                spec,
                mode,
                batch,
                device,
                precision=precision,
                channels_last=channels_last,
                steps=steps,
                repeat=repeat,
                backend=backend,
            )
            rows.append(row)
            print(
                f"batch {batch:4d} {mode:9s} {row['step_ms']:8.2f} ms/step {row['images_per_s']:9.0f} img/s "
                f"(first call +{row['setup_s']:.2f} s)",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

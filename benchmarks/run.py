"""``make bench``: every benchmark this machine can run, results under ``benchmarks/results/<machine>/``.

On every machine: the host cost of one saliency step (CPU, kernel launch stubbed; ``benchmarks.host``).
With a CUDA GPU: the kernel benchmarks, VGG-19 training steps and structural-change cost on the GPU, and
inference on GPU and CPU. Without one (CPU smoke mode): the quickstart CGaP run against its dense baseline
(wall time and ``train_macs``), compile cost on CPU (aot_eager and inductor, at start and after each change),
and CPU inference of compact against full models. Exit status 0 unless a benchmark fails.

    python -m benchmarks.run                 # everything this machine can run
    python -m benchmarks.run --quick         # minutes: short runs, aot_eager only, small batches
    python -m benchmarks.run --parts training inference --epochs 10
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from . import inference, training
from .common import RESULTS_DIR, environment, machine_slug, print_table, write_results

PARTS = ("host", "kernels", "training", "inference")


def _write(name, rows, env, args, *, title, columns, notes=()) -> Path:
    print_table(title, rows, columns)
    paths = write_results(name, rows, env, title=title, columns=columns, notes=notes, results_dir=args.results_dir)
    return paths[2]


def run_kernels(env, args, device) -> list[Path]:
    from . import kernels

    print("kernels (GPU):", flush=True)
    columns = ["workload", "dtype", "impl", "median_us", "gb_per_s", "pct_of_copy", "ours_speedup"]
    stats = kernels.bench_channel_stats(device)
    notes = kernels.verdicts(stats) + [
        "ours_speedup: this row's time over the prepared call's (triton plan, what the trainer runs each step).",
        "triton call: the public channel_stats() with every check; graph replay: the plan's kernel alone.",
    ]
    written = [_write("kernels_channel_stats", stats, env, args, title="channel_stats", columns=columns, notes=notes)]
    gather = kernels.bench_gather(training.vgg19_cifar100(), device)
    title = "gather_channels_many: one VGG-19 structural change (SGD momentum and saliency included)"
    notes = kernels.gather_verdicts(gather) + [
        "triton: one gather_channels_many per group; triton batched: one checked gather_channels_groups call; "
        "unchecked: the same call built as surgery builds it (no argument checks), build included.",
    ]
    written.append(_write("kernels_gather", gather, env, args, title=title, columns=columns, notes=notes))
    return written


def run_host(env, args) -> list[Path]:
    from . import host

    print("host cost of one saliency step (CPU, kernel launch stubbed):", flush=True)
    repeat = 300 if args.quick else 2000
    return [host.run(env, repeat=repeat, results_dir=args.results_dir)[2]]


def run_training(env, args, device, shared: dict[str, Any]) -> list[Path]:
    written = []
    print("training: quickstart CGaP against the dense baseline, equal epochs:", flush=True)
    runs = []
    for run_device in ["cpu"] + (["cuda"] if device.type == "cuda" else []):
        runs += training.cgap_vs_dense(args.epochs, device=run_device)
    shared["quickstart_widths"] = runs[0]["widths"]
    columns = ["recipe", "device", "epochs", "wall_seconds", "wall_vs_dense", "train_macs", "train_macs_vs_dense"]
    columns += ["params_reduction", "test_accuracy", "structural_changes"]
    notes = ["wall_seconds: the training loop (steps, evaluations, surgery, checkpoints); process start-up excluded."]
    title = "CGaP against dense training at equal epochs (quickstart recipes)"
    written.append(_write("training_runs", runs, env, args, title=title, columns=columns, notes=notes))

    if device.type == "cuda":
        workload, backends, change_backends = training.vgg19_cifar100(), ["inductor"], [None, "inductor"]
    else:
        workload = training.quickstart_digits()
        backends = ["aot_eager"] if args.quick else ["aot_eager", "inductor"]
        change_backends = [None, *backends]
    repeat = 3 if args.quick else 5
    print(f"training steps: {workload.name} on {device.type}:", flush=True)
    steps = training.step_times(workload, device, backends, repeat=repeat)
    columns = ["workload", "stage", "mode", "params", "macs_per_image", "step_ms", "images_per_s", "compile_s"]
    notes = [
        "step: forward, cross-entropy, backward, saliency update (channel_stats with EMA), SGD step.",
        "compile_s: first compiled step less a steady one.",
        f"final widths: {training.final_widths(workload.spec, workload.target_reduction, workload.round_to)}",
    ]
    title = f"Training step time by width, eager against compiled ({workload.name}, batch {workload.batch_size})"
    written.append(_write("training_steps", steps, env, args, title=title, columns=columns, notes=notes))

    print(f"structural change cost: {workload.name} on {device.type}:", flush=True)
    changes = []
    for backend in change_backends:
        changes += training.change_cost(workload, device, backend, repeat=repeat)
    columns = ["workload", "change", "mode", "units_changed", "surgery_ms", "recompile_s", "step_ms_before"]
    columns += ["step_ms_after", "change_in_steps"]
    notes = ["change_in_steps: surgery plus recompile, in training steps at the new width."]
    title = f"Cost of one structural change ({workload.name})"
    written.append(_write("structural_change", changes, env, args, title=title, columns=columns, notes=notes))
    return written


def run_inference(env, args, device, shared: dict[str, Any]) -> list[Path]:
    rows = []
    quick_batches = (1, 16) if args.quick else (1, 256)
    if device.type == "cuda":
        print("inference: VGG-19 on GPU (bfloat16):", flush=True)
        rows += inference.bench_inference(
            training.vgg19_cifar100(),
            device,
            batch_sizes=(1, 256),
            modes=("eager", "inductor"),
            dtype=torch.bfloat16,
        )
    cpu = torch.device("cpu")
    print("inference: quickstart model on CPU (float32):", flush=True)
    rows += inference.bench_inference(
        training.quickstart_digits(),
        cpu,
        batch_sizes=(1, 256),
        modes=("eager",) if args.quick else ("eager", "inductor"),
        dtype=torch.float32,
        run_widths=shared.get("quickstart_widths"),
        repeat=3 if args.quick else 10,
    )
    print("inference: VGG-19 on CPU (float32):", flush=True)
    rows += inference.bench_inference(
        training.vgg19_cifar100(),
        cpu,
        batch_sizes=quick_batches,
        modes=("eager", "inductor") if args.cpu_compile else ("eager",),
        dtype=torch.float32,
        repeat=3,
    )
    columns = ["workload", "device", "dtype", "mode", "variant", "batch", "macs_vs_full", "latency_ms"]
    columns += ["images_per_s", "speedup_vs_full"]
    notes = ["widths per variant are in the CSV/JSON; compact widths are the stand-in at the recipe's target."]
    title = "Inference: compact against full width, and round_to"
    return [_write("inference", rows, env, args, title=title, columns=columns, notes=notes)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs, aot_eager only, small batches")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--epochs", type=int, default=None, help="train.epochs of the quickstart runs")
    parser.add_argument("--cpu-compile", action="store_true", help="also compile VGG-19 for CPU inference")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.quick and args.epochs is None:
        args.epochs = 3

    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    env = environment(device)
    if device.type != "cuda":
        print(
            "GPU parts skipped (kernel bandwidth, VGG-19 training steps, GPU inference): "
            "torch.cuda.is_available() is False on this machine; running the CPU smoke mode.",
            flush=True,
        )
    written: list[Path] = []
    shared: dict[str, Any] = {}
    if "host" in args.parts:
        written += run_host(env, args)
    if "kernels" in args.parts and device.type == "cuda":
        written += run_kernels(env, args, device)
    if "training" in args.parts:
        written += run_training(env, args, device, shared)
    if "inference" in args.parts:
        written += run_inference(env, args, device, shared)

    folder = Path(args.results_dir) / machine_slug(env)
    summary = folder / "summary.md"
    # Every table of this machine, this run's and earlier ones (compile_policy, other parts).
    tables = sorted(p for p in folder.glob("*.md") if p.name != summary.name)
    summary.write_text("\n\n".join(p.read_text().strip() for p in tables) + "\n")
    print(f"\nresults: {folder}/ (tables quoted in {summary.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

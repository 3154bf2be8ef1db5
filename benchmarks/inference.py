"""Inference speed of the result: the compact model against the full-width one, and what ``round_to`` does.

Fewer MACs do not always mean faster inference: widths that are not multiples of the hardware's tile sizes
leave tensor cores and vector lanes partly idle. So the compact widths are measured three ways — unrounded
(``round_to`` 1) and rounded up to 8 and to 32 — next to the full-width model, at batch 1 (latency) and a
large batch (throughput), in eval mode under ``torch.inference_mode``. On GPU: bfloat16, eager and compiled
(inductor). On CPU: float32 eager, and compiled where asked (inductor's CPU compile of a VGG-19 takes a
while on two cores).

Compact widths: a finished run's ``widths`` when given (the quickstart's from the training benchmark), else
the stand-in of :func:`benchmarks.training.final_widths` at the recipe's params target.
"""

from __future__ import annotations

from typing import Any

import torch

from cgap_triton.models import SizeOracle, build_model, round_up

from .common import gpu_median_ms, median_seconds
from .training import Workload, final_widths


def variants(workload: Workload, run_widths: dict[str, int] | None = None) -> dict[str, dict[str, int]]:
    """Full width, the compact widths unrounded and rounded to 8 and 32, and a real run's widths if given."""
    full = workload.spec.full_widths()
    exact = final_widths(workload.spec, workload.target_reduction, 1)
    out = {"full": full}
    if run_widths:
        out[f"compact (run, round_to {workload.round_to})"] = run_widths
    for multiple in (1, 8, 32):
        out[f"compact round_to {multiple}"] = {k: min(full[k], round_up(v, multiple)) for k, v in exact.items()}
    return out


def bench_inference(
    workload: Workload,
    device: torch.device,
    *,
    batch_sizes: tuple[int, ...],
    modes: tuple[str, ...],
    dtype: torch.dtype,
    run_widths: dict[str, int] | None = None,
    repeat: int = 5,
) -> list[dict[str, Any]]:
    """Latency per batch and images/s of each width variant, per batch size and mode ("eager" or a backend)."""
    oracle = SizeOracle(workload.spec)
    spec = workload.spec
    rows = []
    for variant, widths in variants(workload, run_widths).items():
        model = build_model(spec, widths, device=device).to(dtype).eval()
        params, macs = oracle(widths)
        for mode in modes:
            for batch in batch_sizes:
                # One static-shape compile per batch size: a second shape would make dynamo recompile the
                # batch dim as dynamic, which is not what a deployed model of fixed batch runs.
                torch.compiler.reset()
                forward = model if mode == "eager" else torch.compile(model, backend=mode, dynamic=False)
                x = torch.randn(batch, spec.in_channels, spec.image_size, spec.image_size, device=device, dtype=dtype)

                def call(forward=forward, x=x):
                    with torch.inference_mode():
                        return forward(x)

                if device.type == "cuda":
                    seconds = gpu_median_ms(call)[0] * 1e-3
                else:
                    seconds = median_seconds(call, device, warmup=1, repeat=repeat)
                rows.append(
                    {
                        "workload": workload.name,
                        "device": device.type,
                        "dtype": str(dtype).removeprefix("torch."),
                        "mode": mode,
                        "variant": variant,
                        "widths": "/".join(str(w) for w in widths.values()),
                        "params": params,
                        "macs_per_image": macs,
                        "batch": batch,
                        "latency_ms": seconds * 1e3,
                        "images_per_s": batch / seconds,
                    }
                )
                print(f"    {variant:28s} {mode:9s} batch {batch:4d} {seconds * 1e3:10.3f} ms", flush=True)
        del model
    full_latency = {(r["mode"], r["batch"]): r["latency_ms"] for r in rows if r["variant"] == "full"}
    for row in rows:
        row["speedup_vs_full"] = full_latency[(row["mode"], row["batch"])] / row["latency_ms"]
        row["macs_vs_full"] = row["macs_per_image"] / rows[0]["macs_per_image"]
    return rows

"""How long a checkpoint holds training up: written in the foreground against copied and written in the background.

The state is what the trainer saves for VGG-19 for CIFAR-100 — weights, BatchNorm buffers and SGD momentum — at
full width (about 160 MB) and at a quarter of the widths (the seed). ``foreground``: ``atomic_save`` (serialise,
fsync, rename) while training waits. ``background``: the trainer's way, ``to_host`` (a host copy of every
tensor; on a GPU, the device-to-host copy) then ``CheckpointWriter.submit``; training waits only for that,
and the write's own time is reported beside it. The folder is a temporary one inside the results folder (the
repository's disk), since the disk and its fsync set most of the foreground time.

    python -m benchmarks.checkpoint_cost                 # results: benchmarks/results/<machine>/checkpoint_cost.*
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from cgap_triton.checkpoint import CheckpointWriter, atomic_save, to_host
from cgap_triton.models import VGG_CFGS, ModelSpec, build_model

from .common import RESULTS_DIR, environment, print_table, write_results

COLUMNS = ["state", "megabytes", "path", "blocked_ms", "write_ms"]


def vgg19_state(widths_fraction: float, device: torch.device) -> dict:
    cfg = [c if c == "M" else max(8, int(c * widths_fraction)) for c in VGG_CFGS["vgg19"]]
    model = build_model(ModelSpec("vgg", 100, 3, 32, tuple(cfg)), None, device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(state: dict, folder: Path, repeat: int, device: torch.device) -> list[tuple[str, float, float]]:
    """(path, median ms training waits, median ms of the write itself) for both ways."""
    path = folder / "checkpoint.pt"
    foreground, blocked, written = [], [], []
    for _ in range(repeat):
        _sync(device)
        started = time.perf_counter()
        atomic_save(state, path)
        foreground.append(time.perf_counter() - started)
    writer = CheckpointWriter()
    for _ in range(repeat):
        _sync(device)
        started = time.perf_counter()
        writer.submit(to_host(state), path)
        blocked.append(time.perf_counter() - started)
        writer.wait()
        written.append(time.perf_counter() - started)
    ms = lambda values: 1e3 * statistics.median(values)  # noqa: E731
    return [("foreground", ms(foreground), ms(foreground)), ("background", ms(blocked), ms(written))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.checkpoint_cost", description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one checkpoint of a VGG-19 at 1/8 width: check it runs")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".checkpoint-cost-", dir=args.results_dir))
    rows = []
    try:
        sizes = [("vgg19 full width", 1.0), ("vgg19 seed (1/4 widths)", 0.25)]
        for label, fraction in [("vgg19 1/8 widths", 0.125)] if args.quick else sizes:
            state = vgg19_state(fraction, device)
            megabytes = sum(t.numel() * t.element_size() for t in _tensors(state)) / 1e6
            for path, blocked, write in measure(state, folder, 1 if args.quick else args.repeat, device):
                rows.append(
                    {
                        "state": label,
                        "megabytes": round(megabytes, 1),
                        "path": path,
                        "blocked_ms": round(blocked, 2),
                        "write_ms": round(write, 2),
                    }
                )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    notes = [
        "blocked_ms: how long training waits per checkpoint (median); write_ms: until the file is in place.",
        f"{args.repeat} checkpoints per row, into a temporary folder on the repository's disk.",
    ]
    write_results(
        "checkpoint_cost",
        rows,
        environment(device),
        title="Checkpoint cost to training",
        columns=COLUMNS,
        notes=notes,
        results_dir=args.results_dir,
    )
    print_table("Checkpoint cost to training", rows, COLUMNS)
    return 0


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors(value)


if __name__ == "__main__":
    sys.exit(main())

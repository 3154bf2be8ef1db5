"""Running the real command line from tests."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUICK = str(ROOT / "recipes" / "quickstart.toml")
# A short CGaP run: 6 epochs, growth every half epoch, pruning every half epoch.
SHORT = [
    "train.epochs=6",
    "cgap.grow.every=0.5",
    "cgap.prune.every=0.5",
    "cgap.stabilize=0.05",
    "train.log_every=10",
    "checkpoint.every=2",
]
SUMMARY_FIELDS = [
    "test_accuracy",
    "params",
    "macs",
    "params_full",
    "macs_full",
    "params_reduction",
    "macs_reduction",
    "peak_params",
    "widths",
    "widths_full",
    "structural_changes",
    "train_macs",
    "train_macs_dense",
    "wall_seconds",
    "compile_seconds",
    "recompiles",
]


def cli(*args, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "0"}
    return subprocess.run(
        [sys.executable, "-m", "cgap_triton", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )


# Three epochs through every phase: four growth steps, stabilise, six pruning steps, fine-tune.
EVERY_PHASE = [
    "train.epochs=3",
    "cgap.grow.every=0.25",
    "cgap.grow.rate=0.5",
    "cgap.grow.until=0.45",
    "cgap.stabilize=0.05",
    "cgap.prune.every=0.25",
    "train.log_every=10",
    "checkpoint.every=3",
]

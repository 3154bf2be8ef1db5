"""Running the real command line from tests."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


def start(out, *overrides, resume=False):
    """The quickstart (with ``overrides``) into ``out`` as a background process; ``resume``: --resume out."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "0"}
    args = ["--resume", str(out)] if resume else [QUICK, *overrides, "--out", str(out)]
    return subprocess.Popen(
        [sys.executable, "-m", "cgap_triton", "recipe", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def wait_for_event(out, name, proc, timeout=120, count=1):
    """Wait until metrics.jsonl holds ``count`` events ``name``; fail if the process ends first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        path = out / "metrics.jsonl"
        if path.is_file() and path.read_text().count(f'"event": "{name}"') >= count:
            return
        if proc.poll() is not None:
            pytest.fail(f"run ended before a {name} event: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    pytest.fail(f"no {name} event within {timeout} s")

"""The paper's recipes: their settings match ALGORITHM.md, and each runs end to end through the real CLI on
tiny CIFAR-10/100 and SVHN files in the official on-disk formats (a few steps, shrunk by overrides)."""

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from test_data import write_cifar10, write_cifar100, write_svhn

from cgap_triton.recipe import load_recipe

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"

# recipe stem: (data set, arch, classes, epochs, weight decay, params target, FLOPs target in %, growth groups)
PAPER = {
    "vgg19_c100": ("cifar100", "vgg19", 100, 160, 5e-4, 0.789, 53.2, 16),
    "vgg19_svhn": ("svhn", "vgg19", 10, 40, 5e-4, 0.858, 74.2, 16),
    "resnet110_c10": ("cifar10", "resnet110", 10, 160, 1e-4, 0.640, 63.3, 54),
}
VARIANTS = ("", "_dense", "_prune_only")


@pytest.mark.parametrize("stem", PAPER)
@pytest.mark.parametrize("variant", VARIANTS)
def test_recipe_has_the_papers_settings(stem, variant):
    name, arch, _, epochs, weight_decay, target, flops, _ = PAPER[stem]
    path = RECIPES / f"{stem}{variant}.toml"
    r = load_recipe(path)
    assert (r.data.name, r.model.arch, r.train.epochs, r.optim.weight_decay) == (name, arch, epochs, weight_decay)
    assert (r.data.batch_size, r.data.val_size, r.model.round_to, r.train.device) == (128, 5000, 8, "auto")
    assert (r.optim.name, r.optim.lr, r.optim.momentum, r.optim.schedule) == ("sgd", 0.1, 0.9, "step")
    assert r.optim.milestones == [0.5, 0.75] and r.compile.enabled
    assert r.cgap.prune.target_reduction == target
    # Growth and pruning decisions happen at the same fractions of training whatever the epoch count.
    assert r.cgap.grow.every / epochs == pytest.approx(2 / 160) and r.cgap.prune.every / epochs == pytest.approx(
        1 / 160
    )
    assert (r.cgap.seed_fraction, r.cgap.grow.enabled, r.cgap.prune.enabled) == {
        "": (0.25, True, True),
        "_dense": (1.0, False, False),
        "_prune_only": (1.0, False, True),
    }[variant]
    header = path.read_text().split("\n[")[0]
    assert f"python -m cgap_triton recipe recipes/{path.name}" in header
    assert header.count(f"recipes/{path.name}") >= 2  # the plain command and an override example
    if not variant:
        assert f"-{target * 100:.1f} % params" in header and f"-{flops} % FLOPs" in header
    # The commented commands' overrides are valid keys and values.
    for line in header.splitlines():
        if f"recipes/{path.name} " in line:
            load_recipe(path, line.split(f"recipes/{path.name} ")[1].split())


def test_recipes_differ_only_where_the_baseline_says():
    for stem in PAPER:
        cgap, dense, prune_only = (tomllib.loads((RECIPES / f"{stem}{v}.toml").read_text()) for v in VARIANTS)
        for other in (dense, prune_only):
            for table in ("data", "model", "train", "optim", "compile"):
                assert other[table] == cgap[table], (stem, table)
        assert prune_only["cgap"]["prune"] == cgap["cgap"]["prune"]


# ----------------------------------------------------------------------------------- end to end (CLI)

# Loads the real CLI after patching only torchvision's md5 check: the tiny files cannot carry the official sums.
LAUNCHER = """
import sys
import torchvision.datasets.cifar as cifar
import torchvision.datasets.svhn as svhn
cifar.check_integrity = svhn.check_integrity = lambda *args, **kwargs: True
from cgap_triton.cli import main
codes = []
for argv in {runs!r}:
    codes.append(main(argv))
    print("exit", argv[1], codes[-1], flush=True)
sys.exit(max(codes))
"""

# One batch of 8 images per epoch for 4 epochs: growth after step 1 and pruning after each remaining step, so
# every phase of the schedule runs. 8 validation images make accuracy too coarse for the pruning guard, and
# the shrunken VGG-19 seed is already below the paper's params target, so both are relaxed.
SHRINK = [
    "train.epochs=4",
    "data.batch_size=8",
    "data.val_size=8",
    "data.train_size=8",
    'train.device="cpu"',
    "compile.enabled=false",
    "train.log_every=1",
    "cgap.grow.every=1",
    "cgap.grow.until=0.5",
    "cgap.stabilize=0",
    "cgap.prune.every=1",
    "cgap.prune.max_accuracy_drop=100",
    "cgap.prune.target_reduction=0.95",
]
WRITERS = {"cifar10": write_cifar10, "cifar100": write_cifar100, "svhn": write_svhn}


@pytest.fixture(scope="module")
def paper_runs(tmp_path_factory):
    """Every paper recipe and its two baselines, one process per data set, on files in the official formats."""
    base = tmp_path_factory.mktemp("paper")
    outs, procs = {}, {}
    # One thread each: on a shared 2-core box, OpenMP threads contending with other work run 10-25x slower.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "0", "OMP_NUM_THREADS": "1"}
    for stem, (name, arch, *_) in PAPER.items():
        root = base / "data" / name
        WRITERS[name](root)
        extra = ["model.width_multiplier=0.125"] if arch == "vgg19" else []  # VGG-19's 20 M params are slow on CPU
        runs = []
        for variant in VARIANTS:
            outs[stem + variant] = base / "runs" / (stem + variant)
            recipe = str(RECIPES / f"{stem}{variant}.toml")
            runs.append(["recipe", recipe, f'data.root="{root}"', *SHRINK, *extra, "--out", str(outs[stem + variant])])
        launcher = base / f"launch_{stem}.py"
        launcher.write_text(LAUNCHER.format(runs=runs))
        procs[stem] = subprocess.Popen(
            [sys.executable, str(launcher)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
    logs = {}
    for stem, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        logs[stem] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    return outs, logs


@pytest.mark.slow
@pytest.mark.parametrize("stem", PAPER)
def test_paper_recipe_and_baselines_run_on_the_official_formats(paper_runs, stem):
    outs, logs = paper_runs
    result = logs[stem]
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    name, _, classes, *_, groups = PAPER[stem]
    summaries = {}
    for variant in VARIANTS:
        out = outs[stem + variant]
        summary = json.loads((out / "summary.json").read_text())
        summaries[variant] = summary
        assert summary["data"] == name and not summary["synthetic_data"]
        assert summary["steps"] == 4 and 0 <= summary["test_accuracy"] <= 1
        assert len(summary["widths_full"]) == groups
        saved = torch.load(out / "model.pt", weights_only=True)
        assert saved["spec"]["num_classes"] == classes
        assert f'name = "{name}"' in (out / "recipe.toml").read_text()
    cgap, dense, prune_only = (summaries[v] for v in VARIANTS)
    # CGaP: starts from the seed, grows, then prunes below its peak.
    assert cgap["params_seed"] < cgap["peak_params"] and cgap["params"] < cgap["peak_params"]
    assert cgap["peak_params"] <= cgap["params_full"] and cgap["train_macs"] < dense["train_macs"]
    # Dense: the full model throughout.
    assert dense["params"] == dense["peak_params"] == dense["params_full"] and dense["structural_changes"] == 0
    # Prune-only: starts full, only shrinks.
    assert prune_only["peak_params"] == prune_only["params_full"] > prune_only["params"]
    assert prune_only["params_full"] == dense["params_full"] == cgap["params_full"]

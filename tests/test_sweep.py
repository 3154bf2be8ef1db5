"""The accuracy-versus-size sweep: its plan, its arithmetic, and the real command on a tiny configuration
(in a subprocess; continuing and refusing run through the same entry point in-process, to save start-up time)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cgap_triton.cli import main
from cgap_triton.recipe import load_recipe
from cgap_triton.sweep import SweepError, aggregate, parse_targets, plan

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "shapes_vgg.toml"
# Two targets, one seed, one short epoch on a few hundred synthetic images: the plumbing, not the result.
TINY = [
    "data.shapes_images=420",
    "data.val_size=100",
    "data.test_size=100",
    "data.batch_size=32",
    "train.epochs=1",
    "cgap.prune.every=0.1",
]


def cli(*args, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "0", "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, "-m", "cgap_triton", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )


def test_baselines_are_derived_from_the_cgap_recipe():
    recipe = load_recipe(RECIPE)
    runs = plan(recipe, [0.5, 0.9], seeds=2)
    expected = [f"{m}-t{t:.2f}-s{s}" for m in ("cgap", "prune_only") for t in (0.5, 0.9) for s in (0, 1)]
    assert sorted(r.name for r in runs) == sorted(expected + ["dense-s0", "dense-s1"])
    for run in runs:
        c = run.recipe.cgap
        assert run.recipe.run.seed == run.seed and not run.recipe.dashboard.enabled
        # Everything but the method's own switches is the CGaP recipe's: same data, model, schedule, importance.
        assert (run.recipe.data, run.recipe.model, run.recipe.optim, run.recipe.train) == (
            recipe.data,
            recipe.model,
            recipe.optim,
            recipe.train,
        )
        assert c.importance == recipe.cgap.importance
        if run.method == "cgap":
            assert c.seed_fraction == recipe.cgap.seed_fraction and c.grow.enabled and c.prune.enabled
        else:
            assert c.seed_fraction == 1.0 and not c.grow.enabled
            assert c.prune.enabled == (run.method == "prune_only")
        if run.method != "dense":
            assert c.prune.target_reduction == run.target
            assert c.prune.every == recipe.cgap.prune.every and c.prune.steps == recipe.cgap.prune.steps


def test_a_baseline_recipe_is_refused_as_the_sweep_recipe():
    with pytest.raises(SweepError, match="expected a CGaP recipe"):
        plan(load_recipe(ROOT / "recipes" / "shapes_vgg_prune_only.toml"), [0.5], seeds=1)


@pytest.mark.parametrize("text", ["", "0.5,abc", "0.5,1.0", "0", "0.5,0.5"])
def test_bad_targets_are_refused(text):
    with pytest.raises(SweepError, match="--targets"):
        parse_targets(text)


def test_aggregate_gives_mean_and_spread_over_seeds():
    def run(method, target, seed, acc, params):
        return {
            "method": method,
            "target": target,
            "seed": seed,
            "test_accuracy": acc,
            "params": params,
            "params_reduction": 1 - params / 1000,
            "macs_reduction": 0.5,
            "train_macs_ratio": 0.4,
            "wall_seconds": 1.0,
        }

    rows = aggregate(
        [run("cgap", 0.8, 0, 0.70, 200), run("cgap", 0.8, 1, 0.80, 180), run("dense", None, 0, 0.9, 1000)]
        + [{"method": "prune_only", "target": 0.8, "seed": 0, "error": "NaN loss"}]
    )
    cgap = next(r for r in rows if r["method"] == "cgap")
    assert cgap["seeds"] == 2
    assert cgap["test_accuracy_mean"] == pytest.approx(0.75)
    assert cgap["test_accuracy_std"] == pytest.approx(0.0707107, rel=1e-5)
    assert (cgap["test_accuracy_min"], cgap["test_accuracy_max"]) == (0.70, 0.80)
    assert cgap["params_mean"] == 190
    assert not any(r["method"] == "prune_only" for r in rows)  # a failed run is not averaged in


def test_the_sweep_command_writes_runs_json_and_plot(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", str(RECIPE), *TINY, "--targets", "0.8,0.5", "--seeds", "1", "--out", str(out)]
    result = cli(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["targets"] == [0.5, 0.8] and sweep["seeds"] == [0] and sweep["synthetic_data"]
    names = {r["name"] for r in sweep["runs"]}
    assert names == {"dense-s0", "cgap-t0.50-s0", "cgap-t0.80-s0", "prune_only-t0.50-s0", "prune_only-t0.80-s0"}
    for r in sweep["runs"]:
        summary = json.loads((out / r["name"] / "summary.json").read_text())
        assert r["test_accuracy"] == summary["test_accuracy"] and 0 <= r["test_accuracy"] <= 1
        assert r["params"] == summary["params"]
    by_name = {r["name"]: r for r in sweep["runs"]}
    assert by_name["dense-s0"]["params"] == by_name["dense-s0"]["params_full"]
    assert (
        by_name["prune_only-t0.80-s0"]["params"]
        < by_name["prune_only-t0.50-s0"]["params"]
        < (by_name["dense-s0"]["params"])
    )
    assert by_name["cgap-t0.50-s0"]["train_macs_ratio"] < 1  # it started from the seed
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "sweep.md").read_text()
    assert "synthetic" in table and "| 0.50 |" in table and "| 0.80 |" in table
    assert "cgap-t0.80-s0" in result.stdout and "sweep folder" in result.stdout

    # The same command again continues the sweep: every run is finished, so nothing is trained again.
    assert main(args) == 0
    assert capsys.readouterr().out.count("(kept)") == 5
    assert json.loads((out / "sweep.json").read_text())["aggregate"] == sweep["aggregate"]

    # A different configuration into the same folder is refused rather than mixed in.
    assert (
        main(["sweep", str(RECIPE), *TINY, "optim.lr=0.01", "--targets", "0.5", "--seeds", "1", "--out", str(out)]) == 2
    )
    assert "different recipe" in capsys.readouterr().err


def test_bad_sweep_arguments_exit_2_with_a_message(tmp_path, capsys):
    assert main(["sweep", str(RECIPE), "--targets", "0.5,1.5", "--out", str(tmp_path / "x")]) == 2
    assert "--targets" in capsys.readouterr().err
    assert main(["sweep", str(RECIPE), "data.shapes_classes=1", "--out", str(tmp_path / "y")]) == 2
    assert "data.shapes_classes" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()

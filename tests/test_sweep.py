"""The accuracy-versus-size sweep: its plan, its arithmetic, and the real command on a tiny configuration
(in a subprocess; continuing and refusing run through the same entry point in-process, to save start-up time)."""

import json
import os
import shutil
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
    # So is the same sweep with fewer targets: its sweep.json would drop the 0.80 runs the folder still holds.
    assert main(["sweep", str(RECIPE), *TINY, "--targets", "0.5", "--seeds", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "cgap-t0.80-s0/" in err and "other --targets or --seeds" in err
    assert json.loads((out / "sweep.json").read_text())["targets"] == [0.5, 0.8]


def test_bad_sweep_arguments_exit_2_with_a_message(tmp_path, capsys):
    assert main(["sweep", str(RECIPE), "--targets", "0.5,1.5", "--out", str(tmp_path / "x")]) == 2
    assert "--targets" in capsys.readouterr().err
    assert main(["sweep", str(RECIPE), "data.shapes_classes=1", "--out", str(tmp_path / "y")]) == 2
    assert "data.shapes_classes" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.parametrize(
    ("text", "clash"),
    [("0.5,0.501", ("0.5", "0.501")), ("0.9,0.7,0.704", ("0.7", "0.704")), ("0.5,0.5", ("0.5", "0.5"))],
)
def test_targets_that_share_a_run_folder_name_are_refused(text, clash):
    # Run folders are named t{target:.2f}: 0.5 and 0.501 would share cgap-t0.50-s0, the second reading the first.
    with pytest.raises(SweepError, match="--targets") as err:
        parse_targets(text)
    assert all(value in str(err.value) for value in clash)
    assert parse_targets("0.5,0.51") == [0.5, 0.51]


class NoTraining:
    """Stands in for CGaPRecipe where a test expects the sweep to train nothing."""

    def __init__(self, *args, **kwargs):
        raise AssertionError(f"the sweep started training {kwargs.get('recipe_name')}")


def finished_summary(reduction: float, accuracy: float, full: int = 100_000) -> dict:
    params = round(full * (1 - reduction))
    return {
        "recipe": "synthetic",
        "data": "shapes",
        "test_accuracy": accuracy,
        "params": params,
        "params_full": full,
        "params_reduction": 1 - params / full,
        "macs": params * 10,
        "macs_reduction": 1 - params / full,
        "peak_params": full,
        "train_macs": 600,
        "train_macs_dense": 1000,
        "train_macs_ratio": 0.6,
        "widths": {"conv1": 8},
        "widths_full": {"conv1": 16},
        "wall_seconds": 2.0,
    }


def finished_sweep(out: Path, targets, seeds: int, outcomes: dict[str, tuple[float, float]]):
    """A sweep folder whose planned runs all finished: run name → (params reduction, test accuracy); a run not
    named lands on its target (dense at 0) with accuracy 0.8."""
    runs = plan(load_recipe(RECIPE), targets, seeds)
    for run in runs:
        reduction, accuracy = outcomes.get(run.name, (run.target or 0.0, 0.8))
        (out / run.name).mkdir(parents=True)
        (out / run.name / "summary.json").write_text(json.dumps(finished_summary(reduction, accuracy)))
    return runs


@pytest.mark.parametrize("foreign", ["notes.txt", "cgap-t0.30-s0/", ".sweep.json", "dense-s0"])
def test_an_out_folder_holding_what_the_sweep_did_not_write_is_refused(tmp_path, monkeypatch, foreign):
    from cgap_triton import sweep

    monkeypatch.setattr("cgap_triton.train.CGaPRecipe", NoTraining)
    out = tmp_path / "out"
    finished_sweep(out, [0.5], 1, {})
    name = foreign.rstrip("/")
    if foreign.endswith("/"):  # a run folder, but of no run this sweep plans
        (out / name).mkdir()
        (out / name / "summary.json").write_text("{}")
    else:
        if (out / name).is_dir():  # a planned run's name, but a file rather than its folder
            shutil.rmtree(out / name)
        (out / name).write_text("someone else's\n")
    with pytest.raises(SweepError, match="--out") as err:
        sweep.run_sweep(load_recipe(RECIPE), [0.5], 1, out, log=lambda line: None)
    assert name in str(err.value)
    assert not (out / "sweep.json").exists() and not (out / "sweep.md").exists()
    if not foreign.endswith("/"):
        assert (out / name).read_text() == "someone else's\n"


def test_foreign_files_are_refused_by_the_command_with_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("cgap_triton.train.CGaPRecipe", NoTraining)
    out = tmp_path / "out"
    out.mkdir()
    for i in range(8):
        (out / f"photo{i}.jpg").write_bytes(b"\xff\xd8")
    assert main(["sweep", str(RECIPE), *TINY, "--targets", "0.5", "--seeds", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "photo0.jpg" in err and "8 entries" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == [f"photo{i}.jpg" for i in range(8)]


def test_a_continued_sweep_flags_off_target_runs_and_leaves_them_out_of_the_means(tmp_path, monkeypatch):
    import matplotlib.axes

    from cgap_triton import sweep

    monkeypatch.setattr("cgap_triton.train.CGaPRecipe", NoTraining)
    drawn = {"scatter": [], "errorbar": []}
    for kind in drawn:
        original = getattr(matplotlib.axes.Axes, kind)

        def spy(self, x, y, *args, _kind=kind, _original=original, **kwargs):
            drawn[_kind].append((list(x), list(y), kwargs.get("marker"), kwargs.get("label")))
            return _original(self, x, y, *args, **kwargs)

        monkeypatch.setattr(matplotlib.axes.Axes, kind, spy)
    out = tmp_path / "out"
    # CGaP overshot to 89.8 % in the 0.50 row; a prune-only run stopped early at 44 % for 0.70.
    outcomes = {"cgap-t0.50-s1": (0.898, 0.95), "prune_only-t0.70-s0": (0.44, 0.99), "cgap-t0.70-s1": (0.7499, 0.7)}
    finished_sweep(out, [0.5, 0.7], 2, outcomes)
    (out / "sweep.json").write_text("{}")  # an earlier pass of the same sweep, and a temporary it left behind
    (out / ".sweep.md.k2x9a1.tmp").write_text("")
    lines = []
    result = sweep.run_sweep(load_recipe(RECIPE), [0.5, 0.7], 2, out, log=lines.append)
    assert sum("(kept)" in line for line in lines) == 10
    assert sum("OFF TARGET" in line for line in lines) == 2

    saved = json.loads((out / "sweep.json").read_text())
    assert saved["target_tolerance"] == sweep.TARGET_TOLERANCE == 0.05
    flagged = {r["name"] for r in saved["runs"] if r.get("off_target")}
    assert flagged == {"cgap-t0.50-s1", "prune_only-t0.70-s0"}
    assert all(r["off_target"] is False for r in saved["runs"] if r["name"] not in flagged)
    cells = {(a["method"], a["target"]): a for a in saved["aggregate"]}
    assert cells[("cgap", 0.5)]["seeds"] == 1 and cells[("cgap", 0.5)]["off_target"] == 1
    assert cells[("cgap", 0.5)]["test_accuracy_mean"] == pytest.approx(0.8)  # not (0.8 + 0.95) / 2
    assert cells[("cgap", 0.5)]["params_reduction_mean"] == pytest.approx(0.5)
    assert cells[("prune_only", 0.7)]["seeds"] == 1 and cells[("prune_only", 0.7)]["test_accuracy_mean"] == 0.8
    # 0.0499 from its target is within the tolerance: averaged in.
    assert cells[("cgap", 0.7)]["seeds"] == 2 and cells[("cgap", 0.7)]["off_target"] == 0
    assert cells[("cgap", 0.7)]["test_accuracy_mean"] == pytest.approx(0.75)
    assert result["aggregate"] == saved["aggregate"]

    table = (out / "sweep.md").read_text()
    note = table.split("\n\n", 2)[2]
    assert "0.05" in note and "left out of the means" in note
    assert "cgap-t0.50-s1: params reduction 89.8% for target 50%" in note
    assert "prune_only-t0.70-s0: params reduction 44.0% for target 70%" in note
    assert "cgap-t0.70-s1" not in note
    row = next(line for line in table.splitlines() if line.startswith("| 0.50 |"))
    assert "80.00% ± 0.00% †" in row

    crosses = [d for d in drawn["scatter"] if d[2] == "x"]
    assert sorted(y for d in crosses for y in d[1]) == [0.95, 0.99]
    assert all(0.95 not in d[1] and 0.99 not in d[1] for d in drawn["errorbar"])  # not joined into the lines
    assert all(0.95 not in d[1] and 0.99 not in d[1] for d in drawn["scatter"] if d[2] != "x")
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_cell_whose_every_run_is_off_target_has_no_means():
    from cgap_triton.sweep import markdown_table

    runs = [
        {"name": f"prune_only-t0.70-s{s}", "method": "prune_only", "target": 0.7, "seed": s}
        | finished_summary(0.44, 0.9)
        for s in (0, 1)
    ] + [{"name": "dense-s0", "method": "dense", "target": None, "seed": 0} | finished_summary(0.0, 0.9)]
    rows = aggregate(runs)
    cell = next(r for r in rows if r["method"] == "prune_only")
    assert (cell["seeds"], cell["off_target"], cell["test_accuracy_mean"]) == (0, 2, None)
    assert next(r for r in rows if r["method"] == "dense")["off_target"] == 0
    result = {"aggregate": rows, "runs": runs, "seeds": [0, 1], "targets": [0.7], "data": "shapes"}
    table = markdown_table(result | {"synthetic_data": True})
    assert "| 0.70 | – | – | – | – | – | – |" in table
    assert table.count("params reduction 44.0% for target 70%") == 2


def test_sweep_outputs_replace_symbolic_links_and_never_write_through_them(tmp_path, monkeypatch):
    from cgap_triton import sweep

    monkeypatch.setattr("cgap_triton.train.CGaPRecipe", NoTraining)
    out = tmp_path / "out"
    finished_sweep(out, [0.5], 1, {})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("sweep.json", "sweep.md", "sweep.png"):
        (elsewhere / name).write_text(f"precious {name}\n")
        (out / name).symlink_to(elsewhere / name)
    sweep.run_sweep(load_recipe(RECIPE), [0.5], 1, out, log=lambda line: None)
    for name in ("sweep.json", "sweep.md", "sweep.png"):
        assert (elsewhere / name).read_text() == f"precious {name}\n"
        assert not (out / name).is_symlink() and (out / name).stat().st_size > 0
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]

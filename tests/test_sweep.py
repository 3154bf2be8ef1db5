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
from cgap_triton.recipe import load_recipe, to_toml
from cgap_triton.sweep import (
    LABELS,
    METHODS,
    SweepError,
    aggregate,
    parse_methods,
    parse_targets,
    plan,
    scratch_b_epochs,
    scratch_recipe,
)

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
# The scratch baselines on the same images: CGaP grows to full width at once (×4 from its quarter-width seed),
# trains it until 70 % of two epochs, then prunes to the target, so it spends far more training MACs than its
# final model does per epoch and scratch-B has to train longer than scratch-E.
TINY_SCRATCH = [
    *TINY[:4],
    "train.epochs=2",
    "cgap.grow.every=0.1",
    "cgap.grow.rate=3",
    "cgap.grow.until=0.1",
    "cgap.stabilize=0.6",
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
    with_target = ("cgap", "prune_only", "scratch_e", "scratch_b")
    expected = [f"{m}-t{t:.2f}-s{s}" for m in with_target for t in (0.5, 0.9) for s in (0, 1)]
    assert sorted(r.name for r in runs) == sorted(expected + ["dense-s0", "dense-s1"])
    names = [r.name for r in runs]
    for run in runs:
        assert not run.reuse
        if run.method.startswith("scratch"):
            # Trained at the widths of the CGaP run of the same target and seed, which is planned first.
            assert run.source == f"cgap-t{run.target:.2f}-s{run.seed}"
            assert names.index(run.source) < names.index(run.name)
            assert run.recipe.model.widths == {} and not run.recipe.cgap.prune.enabled  # until scratch_recipe()
        else:
            assert run.source is None
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


def test_methods_select_the_planned_runs():
    recipe = load_recipe(RECIPE)
    assert parse_methods("cgap,prune_only,dense,scratch_e,scratch_b") == METHODS
    assert parse_methods(" scratch_b, cgap ,scratch_b") == ("cgap", "scratch_b")
    only = plan(recipe, [0.5, 0.9], 1, ("dense", "prune_only"))
    assert [r.name for r in only] == ["dense-s0", "prune_only-t0.50-s0", "prune_only-t0.90-s0"]
    # A scratch method without cgap still plans the CGaP runs it trains the widths of, to be read back only.
    scratch = plan(recipe, [0.5], 2, ("scratch_e",))
    assert [(r.name, r.reuse) for r in scratch] == [
        ("cgap-t0.50-s0", True),
        ("scratch_e-t0.50-s0", False),
        ("cgap-t0.50-s1", True),
        ("scratch_e-t0.50-s1", False),
    ]
    assert [r.reuse for r in plan(recipe, [0.5], 1, ("cgap", "scratch_b"))] == [False, False]


@pytest.mark.parametrize(
    ("text", "named"), [("cgap,scratch", "scratch"), ("dense,Scratch_E,foo", "Scratch_E, foo"), ("", None), (",", None)]
)
def test_unknown_methods_are_refused_with_the_known_ones(text, named):
    with pytest.raises(SweepError, match="--methods") as err:
        parse_methods(text)
    assert "cgap,prune_only,dense,scratch_e,scratch_b" in str(err.value)
    if named:
        assert f"unknown method{'s' if ',' in named else ''} {named};" in str(err.value)


def test_scratch_recipes_take_the_cgap_runs_widths_and_training_macs():
    recipe = load_recipe(RECIPE)  # 10 epochs
    scratch_e, scratch_b = plan(recipe, [0.8], 1, ("cgap", "scratch_e", "scratch_b"))[1:]
    # Dense training costs 1000 MACs per epoch; the final model costs 20 % of that, 200 per epoch; CGaP spent 4000.
    cgap = {"widths": {"conv1": 4, "conv2": 20}, "train_macs": 4000, "train_macs_dense": 10_000, "macs_reduction": 0.8}
    assert scratch_b_epochs(10, cgap) == 20
    assert (
        scratch_b_epochs(10, cgap | {"train_macs": 4099}) == 20
        and scratch_b_epochs(10, cgap | {"train_macs": 4101}) == 21
    )
    assert scratch_b_epochs(10, cgap | {"train_macs": 1500}) == 10  # never fewer epochs than scratch-E
    e, b = scratch_recipe(scratch_e, cgap), scratch_recipe(scratch_b, cgap)
    assert e.model.widths == b.model.widths == {"conv1": 4, "conv2": 20}
    assert (e.train.epochs, b.train.epochs) == (10, 20)
    for r in (e, b):
        c = r.cgap
        assert (c.seed_fraction, c.grow.enabled, c.prune.enabled, r.run.seed) == (1.0, False, False, 0)
        assert (r.data, r.optim, r.model.cfg) == (recipe.data, recipe.optim, recipe.model.cfg)
    assert e.replace(**{"train.epochs": 20}) == b


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
            "train_macs": 400,
            "train_macs_ratio": 0.4,
            "train_macs_vs_dense": 0.4,
            "epochs": 10,
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
    methods = ["--methods", "cgap,prune_only,dense"]
    args = ["sweep", str(RECIPE), *TINY, "--targets", "0.8,0.5", "--seeds", "1", *methods, "--out", str(out)]
    result = cli(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["targets"] == [0.5, 0.8] and sweep["seeds"] == [0] and sweep["synthetic_data"]
    assert sweep["methods"] == ["cgap", "prune_only", "dense"]
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


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_scratch_baselines_train_the_cgap_runs_widths(tmp_path, capsys, monkeypatch):
    out = tmp_path / "sweep"
    methods = ["--methods", "cgap,scratch_e,scratch_b"]
    args = ["sweep", str(RECIPE), *TINY_SCRATCH, "--targets", "0.5", "--seeds", "1", *methods, "--out", str(out)]
    result = cli(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["methods"] == ["cgap", "scratch_e", "scratch_b"]
    by_name = {r["name"]: r for r in sweep["runs"]}
    assert list(by_name) == ["cgap-t0.50-s0", "scratch_e-t0.50-s0", "scratch_b-t0.50-s0"]
    summaries = {name: json.loads((out / name / "summary.json").read_text()) for name in by_name}
    cgap, e, b = summaries.values()
    assert cgap["growth_steps"] > 0 and cgap["pruning_steps"] > 0 and cgap["widths"] != cgap["widths_full"]
    for name, s in (("scratch_e-t0.50-s0", e), ("scratch_b-t0.50-s0", b)):
        # From scratch at the CGaP run's final widths, and no growth or pruning on the way.
        assert s["widths_seed"] == s["widths"] == cgap["widths"]
        assert load_recipe(out / name / "recipe.toml").model.widths == cgap["widths"]
        assert (s["growth_steps"], s["pruning_steps"], s["structural_changes"]) == (0, 0, 0)
        # Its reductions are the CGaP run's, against the same full model; its target is the CGaP run's.
        assert (s["params"], s["params_reduction"], s["params_full"]) == (
            cgap["params"],
            cgap["params_reduction"],
            cgap["params_full"],
        )
        entry = by_name[name]
        assert (entry["target"], entry["source"], entry["widths"]) == (0.5, "cgap-t0.50-s0", cgap["widths"])
        assert entry["off_target"] == by_name["cgap-t0.50-s0"]["off_target"]
    # Scratch-E: the same epochs; scratch-B: more, spending what CGaP spent to within half an epoch of its own.
    assert e["epochs"] == cgap["epochs"] == 2 and by_name["scratch_e-t0.50-s0"]["epochs"] == 2
    assert b["epochs"] == by_name["scratch_b-t0.50-s0"]["epochs"] > 2 and b["steps"] > e["steps"]
    per_epoch = e["train_macs"] / e["epochs"]
    assert abs(b["train_macs"] - cgap["train_macs"]) <= per_epoch / 2
    assert abs(b["train_macs"] - cgap["train_macs"]) < cgap["train_macs"] - e["train_macs"]
    assert b["epochs"] == round(cgap["train_macs"] / per_epoch)
    assert "widths of cgap-t0.50-s0, 2 epochs" in result.stdout

    table = (out / "sweep.md").read_text()
    assert "| target | CGaP test acc. | scratch-E test acc. | scratch-B test acc. | CGaP − scratch-E |" in table
    assert "prune-only" not in table
    assert f"| scratch-B | 0.50 | {b['params']:,} ({b['params_reduction']:.1%}) |" in table
    assert table.count(f"| {b['epochs']} |") == 1  # scratch-B's epochs, in its cost row
    width, height = png_size(out / "sweep.png")
    assert width > 2 * height  # two panels side by side: against params and against training MACs

    # Continued with the scratch methods alone: the CGaP run is read back (and reported), nothing trains.
    monkeypatch.setattr("cgap_triton.train.CGaPRecipe", NoTraining)
    scratch_only = [*args[: args.index("--methods") + 1], "scratch_e,scratch_b", *args[args.index("--out") :]]
    assert main(scratch_only) == 0
    assert capsys.readouterr().out.count("(kept)") == 3
    assert [r["name"] for r in json.loads((out / "sweep.json").read_text())["runs"]] == list(by_name)
    # A scratch run whose CGaP run's widths are not the ones it trained is refused rather than reported.
    cgap_path = out / "cgap-t0.50-s0" / "summary.json"
    cgap_path.write_text(json.dumps(cgap | {"widths": cgap["widths_full"]}))
    assert main(scratch_only) == 2
    assert "scratch_e-t0.50-s0 was run with a different recipe" in capsys.readouterr().err


def test_scratch_methods_without_their_cgap_runs_are_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("cgap_triton.train.CGaPRecipe", NoTraining)
    out = tmp_path / "out"
    args = ["sweep", str(RECIPE), *TINY, "--targets", "0.5,0.7", "--seeds", "1", "--out", str(out)]
    assert main([*args, "--methods", "scratch_e,prune_only"]) == 2
    err = capsys.readouterr().err
    assert "--methods prune_only,scratch_e: scratch_e trains the final widths of the CGaP run" in err
    assert "cgap-t0.50-s0, cgap-t0.70-s0" in err and "add cgap to --methods" in err
    assert not out.exists()
    assert main([*args, "--methods", "cgap,scratch-b"]) == 2
    err = capsys.readouterr().err
    assert "--methods: unknown method scratch-b; expected a comma-separated selection of " in err
    assert "cgap,prune_only,dense,scratch_e,scratch_b" in err and not out.exists()
    # One CGaP run finished, the other did not: still refused, naming the one missing.
    finished_sweep(out, [0.5, 0.7], 1, {})
    shutil.rmtree(out / "cgap-t0.70-s0")
    assert main([*args, "--methods", "scratch_b"]) == 2
    err = capsys.readouterr().err
    assert "no finished cgap-t0.70-s0;" in err and "cgap-t0.50-s0" not in err and "to run it first" in err


def test_the_command_runs_every_method_by_default():
    from cgap_triton.cli import _parser

    assert parse_methods(_parser().parse_args(["sweep", "r.toml"]).methods) == METHODS


def test_run_folders_of_methods_left_out_are_checked_and_left_alone(tmp_path, monkeypatch):
    from cgap_triton import sweep

    monkeypatch.setattr("cgap_triton.train.CGaPRecipe", NoTraining)
    out = tmp_path / "out"
    finished_sweep(out, [0.5], 1, {})
    lines = []
    result = sweep.run_sweep(load_recipe(RECIPE), [0.5], 1, out, methods=("prune_only",), log=lines.append)
    assert [r["name"] for r in result["runs"]] == ["prune_only-t0.50-s0"] and result["methods"] == ["prune_only"]
    assert len(lines) == 1 and "(kept)" in lines[0]
    assert (out / "dense-s0" / "summary.json").is_file() and (out / "scratch_b-t0.50-s0" / "summary.json").is_file()
    # A left-out method's run folder is still checked against the recipe this sweep would give it.
    (out / "dense-s0" / "recipe.toml").write_text(to_toml(load_recipe(RECIPE, ["optim.lr=0.01"])))
    with pytest.raises(SweepError, match="dense-s0 was run with a different recipe"):
        sweep.run_sweep(load_recipe(RECIPE), [0.5], 1, out, methods=("prune_only",), log=lines.append)


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
    named lands on its target (dense at 0) with accuracy 0.8, a scratch run not named where its CGaP run did."""
    runs = plan(load_recipe(RECIPE), targets, seeds)
    for run in runs:
        default = outcomes.get(run.source, (run.target, 0.8)) if run.source else (run.target or 0.0, 0.8)
        reduction, accuracy = outcomes.get(run.name, default)
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
    # CGaP overshot to 89.8 % in the 0.50 row (so did the scratch runs at its widths); a prune-only run stopped
    # early at 44 % for 0.70.
    outcomes = {
        "cgap-t0.50-s1": (0.898, 0.95),
        "scratch_e-t0.50-s1": (0.898, 0.96),
        "scratch_b-t0.50-s1": (0.898, 0.97),
        "prune_only-t0.70-s0": (0.44, 0.99),
        "cgap-t0.70-s1": (0.7499, 0.7),
    }
    finished_sweep(out, [0.5, 0.7], 2, outcomes)
    (out / "sweep.json").write_text("{}")  # an earlier pass of the same sweep, and a temporary it left behind
    (out / ".sweep.md.k2x9a1.tmp").write_text("")
    lines = []
    result = sweep.run_sweep(load_recipe(RECIPE), [0.5, 0.7], 2, out, log=lines.append)
    assert sum("(kept)" in line for line in lines) == 18
    assert sum("OFF TARGET" in line for line in lines) == 4

    saved = json.loads((out / "sweep.json").read_text())
    assert saved["target_tolerance"] == sweep.TARGET_TOLERANCE == 0.05
    flagged = {r["name"] for r in saved["runs"] if r.get("off_target")}
    assert flagged == {"cgap-t0.50-s1", "scratch_e-t0.50-s1", "scratch_b-t0.50-s1", "prune_only-t0.70-s0"}
    assert {r["target"] for r in saved["runs"] if r["name"].startswith("scratch")} == {0.5, 0.7}
    assert all(r["off_target"] is False for r in saved["runs"] if r["name"] not in flagged)
    cells = {(a["method"], a["target"]): a for a in saved["aggregate"]}
    assert cells[("cgap", 0.5)]["seeds"] == 1 and cells[("cgap", 0.5)]["off_target"] == 1
    assert cells[("cgap", 0.5)]["test_accuracy_mean"] == pytest.approx(0.8)  # not (0.8 + 0.95) / 2
    assert cells[("cgap", 0.5)]["params_reduction_mean"] == pytest.approx(0.5)
    for method in ("scratch_e", "scratch_b"):
        assert (cells[(method, 0.5)]["seeds"], cells[(method, 0.5)]["off_target"]) == (1, 1)
        assert (cells[(method, 0.7)]["seeds"], cells[(method, 0.7)]["off_target"]) == (2, 0)
    assert cells[("prune_only", 0.7)]["seeds"] == 1 and cells[("prune_only", 0.7)]["test_accuracy_mean"] == 0.8
    # 0.0499 from its target is within the tolerance: averaged in.
    assert cells[("cgap", 0.7)]["seeds"] == 2 and cells[("cgap", 0.7)]["off_target"] == 0
    assert cells[("cgap", 0.7)]["test_accuracy_mean"] == pytest.approx(0.75)
    assert result["aggregate"] == saved["aggregate"]

    table = (out / "sweep.md").read_text()
    note = table[table.index("† Off target") :]
    assert "0.05" in note and "left out of the means" in note
    assert "cgap-t0.50-s1: params reduction 89.8% for target 50%" in note
    assert "scratch_b-t0.50-s1: params reduction 89.8% for target 50%" in note
    assert "prune_only-t0.70-s0: params reduction 44.0% for target 70%" in note
    assert "cgap-t0.70-s1" not in note
    header = next(line for line in table.splitlines() if line.startswith("| target |"))
    assert header == (
        "| target | CGaP test acc. | prune-only test acc. | scratch-E test acc. | scratch-B test acc. "
        "| CGaP − prune-only | CGaP − scratch-E |"
    )
    row = next(line for line in table.splitlines() if line.startswith("| 0.50 |"))
    assert row.split(" | ")[1:5] == ["80.00% ± 0.00% †", "80.00% ± 0.00%", "80.00% ± 0.00% †", "80.00% ± 0.00% †"]
    # Scratch-B trains 600 / (1000 / 10 × 50 %) = 12 epochs (the CGaP summary: 600 training MACs, 1000 dense).
    assert "| scratch-E | 0.50 | 50,000 (50.0%) † | 0.60 | 10 |" in table
    assert "| scratch-B | 0.50 | 50,000 (50.0%) † | 0.72 | 12 |" in table

    crosses = [d for d in drawn["scatter"] if d[2] == "x"]
    # Both panels (against params, against training MACs) draw every off-target run.
    assert sorted(y for d in crosses for y in d[1]) == sorted([0.95, 0.96, 0.97, 0.99] * 2)
    off = (0.95, 0.96, 0.97, 0.99)
    assert all(not set(off) & set(d[1]) for d in drawn["errorbar"])  # not joined into the lines
    assert all(not set(off) & set(d[1]) for d in drawn["scatter"] if d[2] != "x")
    lines_by_label = {}
    for x, _, _, label in drawn["errorbar"]:
        lines_by_label.setdefault(label, []).append(x)
    assert sorted(lines_by_label) == sorted(LABELS[m] for m in METHODS if m != "dense")
    for method in ("cgap", "prune_only", "scratch_e", "scratch_b"):  # a line per panel: final params, training MACs
        params = [cells[(method, t)]["params_mean"] for t in (0.5, 0.7)]
        assert lines_by_label[LABELS[method]] == [params, [600, 600]]
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_cell_whose_every_run_is_off_target_has_no_means():
    from cgap_triton.sweep import markdown_table

    runs = [
        {"name": f"prune_only-t0.70-s{s}", "method": "prune_only", "target": 0.7, "seed": s}
        | finished_summary(0.44, 0.9)
        | {"epochs": 10, "train_macs_vs_dense": 0.6}
        for s in (0, 1)
    ] + [
        {"name": "dense-s0", "method": "dense", "target": None, "seed": 0}
        | finished_summary(0.0, 0.9)
        | {"epochs": 10, "train_macs_vs_dense": 1.0}
    ]
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

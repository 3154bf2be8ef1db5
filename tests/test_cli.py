"""The real command line, end to end, on a short quickstart."""

import json

import pytest
import torch
from cli_runner import QUICK, SHORT, SUMMARY_FIELDS, cli


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "short"
    result = cli("recipe", QUICK, *SHORT, "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_run_folder_holds_every_artifact(short_run):
    out, result = short_run
    for name in ("recipe.toml", "metrics.jsonl", "summary.json", "checkpoint.pt", "model.pt", "growth.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    for name in SUMMARY_FIELDS:
        assert name in summary, name
    assert 0 <= summary["test_accuracy"] <= 1
    assert summary["peak_params"] > summary["params_seed"]  # it grew
    assert summary["params"] < summary["peak_params"]  # it pruned
    assert summary["train_macs"] < summary["train_macs_dense"]
    assert summary["params_reduction"] == pytest.approx(1 - summary["params"] / summary["params_full"])
    assert set(summary["widths"]) == set(summary["widths_full"])
    assert "test accuracy" in result.stdout and "run folder" in result.stdout


def test_metrics_have_a_line_per_logged_step_and_per_change(short_run):
    out, _ = short_run
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    changes = [r for r in records if r.get("event") in ("grow", "prune")]
    summary = json.loads((out / "summary.json").read_text())
    assert len(changes) == summary["structural_changes"] >= 2
    assert [r["step"] for r in steps] == list(range(10, summary["steps"] + 1, 10))
    assert {"loss", "lr", "params", "widths", "phase"} <= set(steps[0])


def test_model_pt_rebuilds_the_compact_model(short_run):
    out, _ = short_run
    from cgap_triton import load_model
    from cgap_triton.data import Batches, load_dataset
    from cgap_triton.models import count_params
    from cgap_triton.recipe import load_recipe

    model = load_model(out / "model.pt")
    summary = json.loads((out / "summary.json").read_text())
    assert count_params(model) == summary["params"] and model.widths == summary["widths"]
    saved = torch.load(out / "model.pt", weights_only=True)
    data = load_dataset(load_recipe(out / "recipe.toml").data)
    correct = 0
    with torch.no_grad():
        for x, y in Batches(data.test, 100, tuple(saved["mean"]), tuple(saved["std"])):
            correct += int((model(x).argmax(1) == y).sum())
    assert correct / len(data.test) == pytest.approx(summary["test_accuracy"])  # the reported model, reloaded


def test_resolved_recipe_is_saved_and_printable(short_run, tmp_path):
    out, _ = short_run
    text = (out / "recipe.toml").read_text()
    assert "epochs = 6" in text
    printed = cli("recipe", QUICK, *SHORT, "--print-config")
    assert printed.returncode == 0 and printed.stdout == text


def test_bad_overrides_exit_2_with_every_problem_and_no_traceback(tmp_path):
    result = cli("recipe", QUICK, "optim.lrr=0.1", "train.epochs=-1", "--out", str(tmp_path / "x"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "did you mean 'optim.lr'" in result.stderr and "train.epochs: expected a value >= 1, got -1" in result.stderr
    assert not (tmp_path / "x").exists()


def test_existing_run_folder_is_refused(short_run):
    out, _ = short_run
    result = cli("recipe", QUICK, "--out", str(out))
    assert result.returncode == 2 and "not empty" in result.stderr and "a finished run" in result.stderr
    assert "--resume" not in result.stderr  # a finished run is not resumed


def test_missing_dataset_names_the_files_and_leaves_nothing(tmp_path):
    out = tmp_path / "run"
    result = cli("recipe", QUICK, 'data.name="cifar10"', f'data.root="{tmp_path}/data"', "--out", str(out))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "data_batch_1" in result.stderr and "cifar-10-batches-py" in result.stderr
    assert not out.exists()


def test_report_prints_runs_side_by_side(short_run):
    out, _ = short_run
    result = cli("report", str(out), str(out))
    assert result.returncode == 0, result.stderr
    assert "test accuracy" in result.stdout and "conv1" in result.stdout
    missing = cli("report", str(out.parent / "nope"))
    assert missing.returncode == 2 and "nope: no such run folder" in missing.stderr


def test_bf16_and_channels_last_run_through_growth_and_pruning(tmp_path):
    out = tmp_path / "bf16"
    result = cli("recipe", QUICK, *SHORT, 'train.precision="bf16"', "train.channels_last=true", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["growth_steps"] >= 1 and summary["pruning_steps"] >= 1
    assert summary["test_accuracy"] > 0.8  # it learned: ten classes, chance is 0.1

"""``make gpu-check``'s dry run: the same parts, processes, limits and result files on the CPU at tiny sizes, so
that the command a GPU machine runs cannot rot where no GPU is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_module(*args: str) -> subprocess.CompletedProcess:
    """``python -m ARGS`` from the source tree, one thread, as ``make gpu-check`` runs it (no interpreter flag:
    its parts set up their own)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)


def test_dry_run_runs_every_part_and_writes_the_table(tmp_path):
    result = run_module(
        "benchmarks.gpu_check", "--dry-run", "--policies", "--change-cost", "--results-dir", str(tmp_path)
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = result.stdout[result.stdout.rindex("make gpu-check (dry run)") :]  # printed last
    runs = ("vgg19_c100 CGaP", "vgg19_c100 dense", "vgg19_c100 CGaP, eager step")
    runs += ("vgg19_c100 CGaP, policy never", "vgg19_c100 CGaP, policy always")
    for part in ("kernel tests", "kernel benchmarks", "training step", "trainer step", "warm-up", "change cost", *runs):
        assert f"| {part} |" in table
    (written,) = tmp_path.glob("*/gpu_check_dry_run.json")
    saved = json.loads(written.read_text())
    status = {row["part"]: row["status"] for row in saved["rows"]}
    assert status["kernel benchmarks"] == "skipped (needs CUDA)"
    assert all(status[p] == "ok" for p in ("kernel tests", "training step", "trainer step", "warm-up", *runs))
    assert all("img/s" in row["figures"] for row in saved["rows"] if row["part"] in runs)
    assert "passed" in next(r["figures"] for r in saved["rows"] if r["part"] == "kernel tests")
    assert "ms/step" in next(r["figures"] for r in saved["rows"] if r["part"] == "trainer step")
    assert status["change cost"] == "ok"
    assert "cudnn default: next step" in next(r["figures"] for r in saved["rows"] if r["part"] == "change cost")
    assert saved["environment"]["cgap_over_dense_wall"] > 0
    assert 0 <= saved["environment"]["cgap_change_overhead_fraction"] < 1
    assert saved["environment"]["dense_trainer_images_per_s"] > 0
    assert saved["environment"]["auto_over_best_policy_wall"] > 0
    assert (written.parent / "gpu_check_logs" / "vgg19_c100_cgap.log").is_file()
    assert "DRY RUN" in (written.parent / "gpu_check_dry_run.md").read_text()


def test_a_spent_budget_skips_the_parts_left(tmp_path):
    result = run_module("benchmarks.gpu_check", "--dry-run", "--budget-s", "25", "--results-dir", str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (written,) = tmp_path.glob("*/gpu_check_dry_run.json")
    rows = json.loads(written.read_text())["rows"]
    assert rows[0]["status"] == "ok" and rows[-1]["status"] == "skipped (budget spent)"
    assert all(row["limit_s"] <= 25 for row in rows if not row["status"].startswith("skipped"))


def test_only_names_a_part_or_says_which_exist(tmp_path):
    result = run_module("benchmarks.gpu_check", "--dry-run", "--only", "kernel test", "--results-dir", str(tmp_path))
    assert result.returncode == 2
    assert "--only: no part named 'kernel test'; expected one of 'kernel tests'," in result.stderr


def test_trainer_step_benchmark_dry_run():
    result = run_module("benchmarks.trainer_step", "--dry-run")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "µs of host per step" in result.stdout and "Ordered by: internal time" in result.stdout


def test_change_cost_benchmark_dry_run(tmp_path):
    rows_json = tmp_path / "rows.json"
    result = run_module("benchmarks.change_cost", "--dry-run", "--results-dir", str(tmp_path), "--json", str(rows_json))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = json.loads(rows_json.read_text())
    assert [row["change"] for row in rows] == [0, 1, 2]  # the seed widths, then two growth changes
    assert rows[0]["surgery_ms"] == 0 and all(row["surgery_ms"] > 0 for row in rows[1:])
    assert rows[0]["params"] < rows[1]["params"] < rows[2]["params"]  # each change grew the net
    assert all(row["steady_ms"] > 0 and row["next_step_ms"] > 0 for row in rows)
    (written,) = tmp_path.glob("*/change_cost_dry_run.md")
    assert "DRY RUN" in written.read_text()

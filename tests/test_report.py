"""`python -m cgap_triton report RUN...` on a real tiny run: the summary table and growth.png."""

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from cli_runner import EVERY_PHASE as TINY
from cli_runner import QUICK, ROOT

from cgap_triton.report import _phase_spans, trajectory_from_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def cli(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "0", "COLUMNS": "140"}
    return subprocess.run(
        [sys.executable, "-m", "cgap_triton", *args], capture_output=True, text=True, timeout=600, env=env, cwd=ROOT
    )


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "grown"
    result = cli("recipe", QUICK, *TINY, "--out", str(out), "--no-dashboard")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stdout


@pytest.fixture
def run(logged_run):
    return logged_run[0]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def row(text: str, label: str) -> str:
    return next(line for line in text.splitlines() if f" {label} " in line)


def test_report_prints_the_summary_and_regenerates_growth_png(run):
    summary = json.loads((run / "summary.json").read_text())
    (run / "growth.png").unlink()
    result = cli("report", str(run))
    assert result.returncode == 0, result.stderr
    assert run.name in result.stdout
    assert f"{summary['test_accuracy']:.2%}" in row(result.stdout, "test accuracy")
    assert f"{summary['params']:,}" in row(result.stdout, "params")
    assert f"{summary['params_reduction']:.1%}" in row(result.stdout, "params reduction")
    assert f"{summary['macs_reduction']:.1%}" in row(result.stdout, "MACs reduction")
    for group, full in summary["widths_full"].items():
        assert f"{full} → {summary['widths'][group]}" in row(result.stdout, group)
    width, height = png_size(run / "growth.png")
    assert width >= 800 and height >= 400


def test_off_a_terminal_the_run_logged_one_plain_line_per_step_and_event(logged_run):
    run, stdout = logged_run
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    lines = stdout.split("cgap_triton runs")[0].splitlines()  # the log, before the final table
    steps = [line for line in lines if re.match(r"step +\d+ epoch +[\d.]+ phase \w+ +loss [\d.]+ train_acc ", line)]
    assert len(steps) == sum(r["kind"] == "step" for r in records) > 0
    events = [line for line in lines if line.startswith("[step ")]
    assert len(events) == sum(r["kind"] == "event" for r in records)
    assert len(steps) + len(events) == len([line for line in lines if line.strip()])
    grown = [r for r in records if r.get("event") == "grow"]
    first = next(iter(grown[0]["change"].items()))
    assert any("grew " in line and f"{first[0]} {first[1][0]}→{first[1][1]}" in line for line in events)
    assert "\x1b[" not in "\n".join(lines)  # no cursor control or colour in a log


def test_growth_curve_ends_at_the_final_model(run):
    summary = json.loads((run / "summary.json").read_text())
    trajectory, phases = trajectory_from_metrics(run)
    assert trajectory[0]["widths"] == summary["widths_seed"]
    assert trajectory[-1]["widths"] == summary["widths"] and trajectory[-1]["params"] == summary["params"]
    assert max(t["params"] for t in trajectory) == summary["peak_params"]
    spans = _phase_spans(phases, summary["steps"])
    assert [s[0] for s in spans] == ["seed", "grow", "stabilize", "prune", "finetune"]
    assert spans[0][1] == 0 and spans[-1][2] == summary["steps"]


def test_phase_spans_infer_the_first_phase_when_no_event_marks_it():
    assert _phase_spans([{"step": 30, "phase": "stabilize"}], 100) == [("grow", 0, 30), ("stabilize", 30, 100)]
    assert _phase_spans([{"step": 18, "phase": "grow"}], 50) == [("seed", 0, 18), ("grow", 18, 50)]


def test_report_puts_runs_side_by_side(run, tmp_path):
    baseline = tmp_path / "dense"
    shutil.copytree(run, baseline)
    summary = json.loads((baseline / "summary.json").read_text())
    summary.update(test_accuracy=summary["test_accuracy"] - 0.0123, params=summary["params_full"])
    summary["widths"] = dict(summary["widths_full"])
    (baseline / "summary.json").write_text(json.dumps(summary))
    result = cli("report", str(run), str(baseline))
    assert result.returncode == 0, result.stderr
    header = next(line for line in result.stdout.splitlines() if run.name in line and "dense" in line)
    assert header.index(run.name) < header.index("dense")
    ours = json.loads((run / "summary.json").read_text())
    accuracy = row(result.stdout, "test accuracy")
    assert accuracy.index(f"{ours['test_accuracy']:.2%}") < accuracy.index(f"{summary['test_accuracy']:.2%}")
    conv6 = row(result.stdout, "conv6")
    assert f"128 → {ours['widths']['conv6']}" in conv6 and "128 → 128" in conv6
    assert png_size(baseline / "growth.png")[0] > 0


def test_report_on_an_unfinished_run_says_so(tmp_path):
    (tmp_path / "half").mkdir()
    result = cli("report", str(tmp_path / "half"))
    assert result.returncode == 2
    assert "no summary.json" in result.stderr and "half" in result.stderr
    assert "Traceback" not in result.stderr

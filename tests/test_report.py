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

from cgap_triton.telemetry.report import _phase_spans, trajectory_from_metrics

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


def damage_summary(text):
    return lambda summary, metrics: (text, metrics)


def edit_summary(edit):
    def damage(summary, metrics):
        s = json.loads(summary)
        edit(s)
        return json.dumps(s), metrics

    return damage


def edit_first_event(event, edit):
    def damage(summary, metrics):
        lines = metrics.splitlines()
        i = next(i for i, line in enumerate(lines) if json.loads(line).get("event") == event)
        record = json.loads(lines[i])
        edit(record)
        lines[i] = json.dumps(record)
        return summary, "\n".join(lines) + "\n"

    return damage


def insert_line(text):
    def damage(summary, metrics):
        lines = metrics.splitlines()
        return summary, "\n".join([lines[0], text, *lines[1:]]) + "\n"

    return damage


DAMAGE = {
    "summary-bad-json": (damage_summary('{"test_accuracy": 0.5,'), "summary.json is not valid JSON"),
    "summary-empty": (damage_summary(""), "summary.json is empty"),
    "summary-a-list": (damage_summary("[0.9, 1234]"), "summary.json holds a JSON array, not an object"),
    "summary-not-utf8": (damage_summary(b"\xff\xfe{\x00".decode("latin-1")), "summary.json is not UTF-8"),
    "summary-lacks-field": (edit_summary(lambda s: s.pop("widths_full")), "summary.json: lacks 'widths_full'"),
    "summary-mistyped-accuracy": (
        edit_summary(lambda s: s.update(test_accuracy="high")),
        "summary.json: 'test_accuracy' should be a number, got \"high\"",
    ),
    "summary-mistyped-widths": (
        edit_summary(lambda s: s.update(widths=[8, 16])),
        "summary.json: 'widths' should be a mapping group → width",
    ),
    "summary-mistyped-optional": (
        edit_summary(lambda s: s.update(wall_seconds="slow")),
        "summary.json: 'wall_seconds' should be a number",
    ),
    "metrics-list-line": (insert_line("[1, 2, 3]"), "metrics.jsonl: line 2 is a JSON array, not a record"),
    "metrics-number-line": (insert_line("42"), "metrics.jsonl: line 2 is a JSON number, not a record"),
    "metrics-grow-lacks-widths": (
        edit_first_event("grow", lambda r: r.pop("widths")),
        "(grow event) lacks 'widths'",
    ),
    "metrics-phase-lacks-to": (edit_first_event("phase", lambda r: r.pop("to")), "(phase event) lacks 'to'"),
    "metrics-eval-mistyped": (
        edit_first_event("eval", lambda r: r.update(val_accuracy="good")),
        "(eval event) 'val_accuracy' should be a number",
    ),
}


def damaged_copy(run: Path, where: Path, damage) -> Path:
    """A run folder holding the files report reads, summary.json and metrics.jsonl, damaged by ``damage``."""
    where.mkdir()
    summary, metrics = damage((run / "summary.json").read_text(), (run / "metrics.jsonl").read_text())
    (where / "summary.json").write_bytes(summary.encode("latin-1" if "\xff" in summary else "utf-8"))
    (where / "metrics.jsonl").write_text(metrics)
    return where


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_report_names_a_damaged_run_and_still_reports_the_good_one(run, tmp_path, capsys, monkeypatch, kind):
    from cgap_triton.cli import main

    monkeypatch.setenv("COLUMNS", "200")
    damage, problem = DAMAGE[kind]
    damaged = damaged_copy(run, tmp_path / "damaged", damage)
    (run / "growth.png").unlink(missing_ok=True)
    assert main(["report", str(damaged), str(run)]) == 1
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {damaged}: "), err
    assert problem in lines[0]
    assert "Traceback" not in err
    # The good run is still in the table, alone, and its growth curve is drawn; the damaged one draws nothing.
    assert run.name in out and "damaged" not in out.split("growth curve:")[0]
    summary = json.loads((run / "summary.json").read_text())
    assert f"{summary['test_accuracy']:.2%}" in row(out, "test accuracy")
    assert f"growth curve: {run / 'growth.png'}" in out
    assert png_size(run / "growth.png")[0] > 0
    assert not (damaged / "growth.png").exists()


def test_report_command_on_damaged_missing_and_good_runs_exits_1_without_a_traceback(run, tmp_path):
    damaged = damaged_copy(run, tmp_path / "damaged", DAMAGE["summary-bad-json"][0])
    missing = tmp_path / "missing"
    result = cli("report", str(damaged), str(missing), str(run))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"error: {damaged}: summary.json is not valid JSON")
    assert lines[1] == f"error: {missing}: no such run folder"
    assert run.name in result.stdout and "growth curve:" in result.stdout


def test_report_exit_status_without_any_run_is_2_and_with_only_damaged_ones_1(run, tmp_path, capsys):
    from cgap_triton.cli import main

    (tmp_path / "half").mkdir()
    assert main(["report", str(tmp_path / "missing"), str(tmp_path / "half")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 2 and "no summary.json" in err
    damaged = damaged_copy(run, tmp_path / "damaged", DAMAGE["summary-empty"][0])
    assert main(["report", str(damaged), str(tmp_path / "half")]) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 2 and "summary.json is empty" in err


def test_a_torn_metrics_line_of_a_killed_and_resumed_run_is_not_damage(run, tmp_path, capsys):
    from cgap_triton.cli import main

    resumed = damaged_copy(run, tmp_path / "resumed", insert_line('{"kind": "step", "time": 17'))
    assert main(["report", str(resumed)]) == 0
    assert capsys.readouterr().err == ""
    assert png_size(resumed / "growth.png")[0] > 0


def test_growth_png_replaces_a_symbolic_link_and_leaves_its_target_alone(run, tmp_path):
    from cgap_triton.telemetry.report import regenerate_growth

    linked = damaged_copy(run, tmp_path / "linked", lambda summary, metrics: (summary, metrics))
    precious = tmp_path / "precious.png"
    precious.write_bytes(b"not to be overwritten")
    (linked / "growth.png").symlink_to(precious)
    assert regenerate_growth(linked) == linked / "growth.png"
    assert precious.read_bytes() == b"not to be overwritten"
    assert not (linked / "growth.png").is_symlink() and png_size(linked / "growth.png")[0] > 0
    assert sorted(p.name for p in linked.iterdir()) == ["growth.png", "metrics.jsonl", "summary.json"]

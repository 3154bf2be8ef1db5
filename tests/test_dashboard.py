"""The live dashboard and the plain log lines: what a person sees in a terminal and in a log file."""

import fcntl
import io
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

import pytest
from cli_runner import EVERY_PHASE as SHORT
from cli_runner import QUICK, ROOT
from rich.console import Console

from cgap_triton.telemetry import StdoutSink
from cgap_triton.telemetry.dashboard import Dashboard, sparkline, width_bar
from cgap_triton.telemetry.events import (
    STRUCTURAL_CHANGES,
    CheckpointSaved,
    Compiled,
    CompileFallback,
    Compiling,
    Evaluated,
    GrowthStopped,
    PhaseChanged,
    Started,
)

VGG_FULL = {"conv1": 32, "conv2": 32, "conv3": 64, "conv4": 64, "conv5": 128, "conv6": 128}
RESNET110_FULL = {f"s{s}b{b}": w for s, w in ((1, 16), (2, 32), (3, 64)) for b in range(1, 19)}


def run_sequence(full: dict[str, int]) -> list[tuple[str, dict]]:
    """What the trainer sends over a short CGaP run: start, steps, two growth steps, the phase changes,
    one pruning step, evals, compile events and a checkpoint, with the fields train.py fills in."""
    seed = {g: max(4, w // 4) for g, w in full.items()}

    def size(widths):
        return sum(w * 100 for w in widths.values()), sum(w * 1000 for w in widths.values())

    def metrics(step, phase, widths, loss, acc, peak):
        params, macs = size(widths)
        return (
            "metrics",
            {
                "step": step,
                "epoch": step / 35,
                "phase": phase,
                "loss": loss,
                "train_accuracy": acc,
                "val_accuracy": acc - 0.05,
                "lr": 0.05 * (1 - step / 280),
                "images_per_second": 3500.0 + step,
                "params": params,
                "macs": macs,
                "peak_params": peak,
                "widths": dict(widths),
                "train_macs": step * macs * 96,
                "compiled": step > 10,
                "saliency_spread": {g: [0.25, 0.75, 2.5] for g in widths},
                "twin_fraction": {g: 0.875 if i == 0 else 0.0 for i, g in enumerate(widths)},
            },
        )

    def change(kind, step, before, after):
        params, macs = size(after)
        return (
            "event",
            STRUCTURAL_CHANGES[kind](
                step=step,
                epoch=step / 35,
                change={g: [before[g], after[g]] for g in after if before[g] != after[g]},
                widths=dict(after),
                params=params,
                macs=macs,
                params_reduction=1 - params / size(full)[0],
                changes=1,
            ),
        )

    grown1 = {g: w + 4 for g, w in seed.items()}
    grown2 = {g: min(full[g], w * 2) for g, w in grown1.items()}
    pruned = {g: w - 4 if i % 2 else w for i, (g, w) in enumerate(grown2.items())}
    peak = size(grown2)[0]
    params, macs = size(seed)
    full_params, full_macs = size(full)
    return [
        (
            "event",
            Started(
                step=0,
                device="cpu",
                world_size=1,
                recipe="quickstart",
                data="digits",
                widths=dict(seed),
                widths_full=dict(full),
                widths_seed=dict(seed),
                params=params,
                params_full=full_params,
                macs=macs,
                macs_full=full_macs,
                phase="seed",
                total_steps=280,
                steps_per_epoch=35,
                epochs=8,
            ),
        ),
        ("event", Compiling(reason="at start", backend="aot_eager")),
        ("event", Compiled(step=1, reason="at start", seconds=1.5, count=1)),
        metrics(10, "seed", seed, 2.1, 0.3, params),
        change("grow", 18, seed, grown1),
        ("event", PhaseChanged(step=18, from_phase="seed", to="grow", epoch=18 / 35)),
        ("event", Compiling(reason="after grow step 1", backend="aot_eager")),
        metrics(20, "grow", grown1, 1.2, 0.6, size(grown1)[0]),
        ("event", Evaluated(step=35, epoch=1, val_accuracy=0.71)),
        change("grow", 36, grown1, grown2),
        ("event", GrowthStopped(step=54, reason="reached grow.until (0.4 of training)")),
        ("event", PhaseChanged(step=54, from_phase="grow", to="stabilize")),
        ("event", CheckpointSaved(step=54, path="/tmp/run/checkpoint.pt")),
        ("event", PhaseChanged(step=70, from_phase="stabilize", to="prune")),
        change("prune", 70, grown2, pruned),
        metrics(80, "prune", pruned, 0.4, 0.9, peak),
    ]


def feed(sink, sequence):
    for kind, payload in sequence:
        (sink.log_metrics if kind == "metrics" else sink.log_event)(payload)


def rendered_text(full, width=160, height=50, upto=None, then=()):
    console = Console(record=True, width=width, height=height, file=io.StringIO(), force_terminal=True)
    dashboard = Dashboard(console=console, live=False)
    feed(dashboard, run_sequence(full)[:upto] + list(then))
    console.print(dashboard.render())
    return console.export_text()


def test_dashboard_shows_phase_group_rows_sizes_and_structural_events():
    text = rendered_text(VGG_FULL)
    assert "quickstart · digits · cpu" in text
    assert " PRUNE " in text and "GROW" not in text  # the current phase stands out; the others are lower case
    sequence = run_sequence(VGG_FULL)
    final = sequence[-1][1]
    for group, width in final["widths"].items():
        row = next(line for line in text.splitlines() if re.search(rf"\b{group}\b +[█░·]", line))
        assert f"{width}/{VGG_FULL[group]}" in row
        assert "0.25 0.75 2.50" in row  # saliency spread p10 p50 p90
    assert "-4" in next(line for line in text.splitlines() if re.search(r"\bconv2\b +[█░·]", line))
    assert f"{final['params']:,}" in text and f"{final['peak_params']:,}" in text
    assert "grew 136 units: conv1 12→24 (+12)" in text  # describe_event, as in the plain log
    assert "phase grow → stabilize" in text and "growth stopped: reached grow.until" in text
    assert "pruned 12 units" in text
    assert "checkpoint at step 54" in text
    assert "images/s" in text and "3,580" in text


def test_compile_state_follows_compiling_and_compile_events():
    compiling = rendered_text(VGG_FULL, upto=8)  # "compiling after grow step 1", then a step is logged
    assert "compiling after grow step 1…" in compiling and "aot_eager · 1 compilations" in compiling
    compiled = Compiled(step=21, reason="after grow step 1", seconds=0.8, count=2)
    after = rendered_text(VGG_FULL, upto=8, then=[("event", compiled)])
    assert "compiling" not in after
    assert "compiled after grow step 1 in 0.8s" in after and "2 compilations, 2.3s" in after
    fallback = CompileFallback(step=22, reason="after grow step 1", detail="1 frame(s) failed")
    warned = rendered_text(VGG_FULL, upto=8, then=[("event", compiled), ("event", fallback)])
    assert "fell back to eager ×1" in warned and "1 frame(s) failed" in warned  # state, and the event in full


def test_width_bar_marks_seed_grown_pruned_and_full():
    bar = width_bar(now=12, seed=8, full=32, peak=16, cells=8).plain
    assert bar == "███░····"  # 2 cells of seed, 1 grown, 1 pruned since the peak, 4 to full
    assert width_bar(now=32, seed=8, full=32, peak=32, cells=8).plain == "█" * 8
    assert sparkline([1.0, 2.0, 3.0]) == "▁▅█"
    assert sparkline([float("nan")]) == ""


@pytest.mark.parametrize("width,height", [(160, 50), (100, 30)])
def test_resnet110_groups_fit_the_terminal(width, height):
    text = rendered_text(RESNET110_FULL, width, height)
    lines = text.rstrip("\n").splitlines()
    assert len(lines) <= height and max(len(line) for line in lines) <= width
    shown = {g for g in RESNET110_FULL if re.search(rf"\b{g}\b +[█░·]", text)}
    more = re.search(r"… (\d+) more groups", text)
    hidden = int(more.group(1)) if more else 0
    assert len(shown) + hidden == len(RESNET110_FULL)
    if width == 160:
        assert hidden == 0  # 54 rows fit in side-by-side columns on a 160×50 terminal
    assert "last structural events" in text and "pruned" in text


def test_refresh_is_bounded_and_logging_does_not_render():
    console = Console(file=io.StringIO(), force_terminal=True, width=160, height=50)
    dashboard = Dashboard(refresh_per_second=10, console=console)
    renders = []
    draw = dashboard.render
    dashboard.render = lambda *args: renders.append(time.monotonic()) or draw(*args)
    sequence = run_sequence(RESNET110_FULL)
    feed(dashboard, sequence[:1])
    metrics = [payload for kind, payload in sequence if kind == "metrics"]
    started, calls, spent = time.monotonic(), 0, 0.0
    while time.monotonic() - started < 0.8:
        m = dict(metrics[calls % len(metrics)], step=calls)
        t0 = time.perf_counter()
        dashboard.log_metrics(m)
        spent += time.perf_counter() - t0
        calls += 1
        if calls % 200 == 0:
            time.sleep(0.01)  # let the refresh thread in, as a training step would
    elapsed = time.monotonic() - started
    dashboard.close()
    # Live draws once on start and once on stop; in between at most refresh_per_second × elapsed.
    assert 2 <= len(renders) <= 10 * elapsed + 3, (len(renders), calls, elapsed)
    assert spent / calls < 1e-3, f"log_metrics took {spent / calls * 1e6:.0f} µs on average"
    assert "s3b18" in console.file.getvalue()  # the final frame stays on screen


def test_between_updates_only_the_header_is_drawn_again():
    console = Console(file=io.StringIO(), force_terminal=True, width=160, height=50)
    dashboard = Dashboard(console=console, live=False)
    feed(dashboard, run_sequence(RESNET110_FULL))
    layouts = []
    lay_out = dashboard._body
    dashboard._body = lambda *args: layouts.append(1) or lay_out(*args)
    frames = []
    for _ in range(3):
        console.begin_capture()
        console.print(dashboard._render_snapshot())
        frames.append(console.end_capture())
    assert len(layouts) == 1 and frames[0].count("s3b18") == frames[2].count("s3b18") == 1
    feed(dashboard, run_sequence(RESNET110_FULL)[-1:])
    console.print(dashboard._render_snapshot())
    assert len(layouts) == 2


def test_plain_lines_one_per_logged_step_and_per_event():
    stream = io.StringIO()
    sequence = run_sequence(VGG_FULL)
    feed(StdoutSink(stream), sequence)
    lines = stream.getvalue().splitlines()
    assert len(lines) == len(sequence)
    steps = [line for line in lines if line.startswith("step ")]
    assert len(steps) == sum(kind == "metrics" for kind, _ in sequence)
    assert re.fullmatch(
        r"step +80 epoch +2\.29 phase prune +loss 0\.4000 train_acc 0\.900 val_acc 0\.850 .*", steps[-1]
    )
    assert any(line.startswith("[step 18] grew 24 units: conv1 8→12 (+4), conv2 8→12 (+4)") for line in lines)
    assert "[step 54] phase grow → stabilize" in lines
    assert "[step -] compiling after grow step 1 (backend aot_eager)" in lines


def _cli_env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "0"}


def test_in_a_terminal_the_run_draws_the_dashboard(tmp_path):
    out = tmp_path / "live"
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    env = {**_cli_env(), "TERM": "xterm-256color"}
    env.pop("COLUMNS", None), env.pop("LINES", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "cgap_triton", "recipe", QUICK, *SHORT, "--out", str(out)],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=env,
        cwd=ROOT,
    )
    os.close(terminal)
    chunks, deadline = [], time.monotonic() + 300
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 1.0)
        if ready:
            try:
                data = os.read(controller, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif process.poll() is not None:
            break
    os.close(controller)
    assert process.wait(timeout=30) == 0
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode(errors="replace"))
    assert "channel groups" in screen and "last structural events" in screen
    assert re.search(r"conv6 +[█░·]+ +\d+/128", screen)
    assert " DONE " in screen and "test accuracy" in screen
    assert not re.search(r"^step +\d+ epoch ", screen, flags=re.M)  # no plain lines under the dashboard
    assert (out / "summary.json").is_file()


def test_the_group_table_shows_how_many_units_are_twins():
    text = rendered_text(VGG_FULL)
    assert "twins" in text
    assert re.search(r"conv1 .*88%", text) and re.search(r"conv2 .* 0%", text)

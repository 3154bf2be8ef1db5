"""Smoke tests of the benchmark code on CPU with tiny sizes, so that it does not rot between GPU runs.

They check what the numbers rest on, not the numbers: result files carry the machine and versions, the
hand-written PyTorch baselines compute what the kernels compute, and each CPU benchmark runs end to end.
"""

import csv
import json
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/ is not an installed package

from benchmarks import common, compile_policy, host, inference, kernels, training  # noqa: E402
from cgap_triton.models import ModelSpec, SizeOracle  # noqa: E402

CPU = torch.device("cpu")


def tiny_workload() -> training.Workload:
    spec = ModelSpec("vgg", 3, 1, 8, (8, "M", 16, 16))
    return training.Workload("tiny", spec, batch_size=4, round_to=2, target_reduction=0.5)


def test_result_files_name_machine_versions_and_date(tmp_path):
    env = common.environment(CPU)
    rows = [{"impl": "a", "median_us": 1.5, "bytes": 123_456}, {"impl": "b", "median_us": 3.0, "bytes": 7}]
    paths = common.write_results("demo", rows, env, title="Demo", columns=["impl", "median_us"], results_dir=tmp_path)
    assert [p.name for p in paths] == ["demo.json", "demo.csv", "demo.md"]
    assert paths[0].parent == tmp_path / common.machine_slug(env)
    data = json.loads(paths[0].read_text())
    assert data["rows"] == rows
    for key in ("date", "cpu", "torch", "triton", "load_average_1m"):
        assert key in data["environment"]
    with open(paths[1]) as f:
        table = list(csv.DictReader(f))
    assert table[0]["torch"] == torch.__version__ and table[0]["machine"] and table[0]["date"] == env["date"]
    markdown = paths[2].read_text()
    assert "| impl | median_us |" in markdown and torch.__version__ in markdown and env["date"] in markdown


def test_final_widths_reach_the_params_target():
    workload = tiny_workload()
    widths = training.final_widths(workload.spec, 0.5, 2)
    oracle = SizeOracle(workload.spec)
    full = workload.spec.full_widths()
    assert 1 - oracle.params(widths) / oracle.params(full) >= 0.5
    assert all(w % 2 == 0 and 2 <= w <= full[k] for k, w in widths.items())


def test_step_times_and_change_cost_run_on_cpu():
    workload = tiny_workload()
    rows = training.step_times(workload, CPU, [], repeat=1)
    assert [r["stage"] for r in rows] == ["seed", "peak", "final"]
    assert all(r["step_ms"] > 0 and r["images_per_s"] > 0 for r in rows)
    changes = training.change_cost(workload, CPU, None, repeat=1)
    assert [c["change"] for c in changes] == ["grow", "prune"]
    assert all(c["units_changed"] > 0 and c["surgery_ms"] > 0 for c in changes)


def test_inference_variants_and_speedups():
    rows = inference.bench_inference(
        tiny_workload(), CPU, batch_sizes=(1, 2), modes=("eager",), dtype=torch.float32, repeat=1
    )
    assert {r["variant"] for r in rows} == {"full", "compact round_to 1", "compact round_to 8", "compact round_to 32"}
    full = [r for r in rows if r["variant"] == "full"]
    assert all(r["speedup_vs_full"] == 1.0 and r["macs_vs_full"] == 1.0 for r in full)
    assert all(r["latency_ms"] > 0 for r in rows)


def test_torch_channel_stats_baseline_matches_the_kernel():
    weights, grads, outs = kernels.stats_inputs("resnet20", torch.float32, CPU)
    expected = [o.clone() for o in outs]
    kernels.torch_channel_stats(weights, grads, outs, 0.9)
    kernels.channel_stats(weights, grads, out=expected, momentum=0.9)
    for a, b in zip(outs, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["grow", "prune"])
def test_index_select_cat_baseline_matches_surgery(kind):
    calls = kernels.capture_change(tiny_workload(), kind, CPU)
    assert calls and all(c["kind"] == kind for c in calls)
    ours, theirs = kernels.ours_change(calls), kernels.torch_change(calls)
    batched = kernels.ours_batched(calls)
    unchecked = kernels.ours_unchecked(calls)  # surgery's form of the same call: the same outputs
    assert all((u is None and b is None) or torch.equal(u, b) for u, b in zip(unchecked, batched, strict=True))
    stds = [s for c in calls for s in c["noise_stds"]]
    assert len(ours) == len(theirs) == len(stds) == len(batched)
    for a, b, c, std in zip(ours, theirs, batched, stds):
        assert a.shape == b.shape
        if not (isinstance(std, torch.Tensor) or std > 0):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        if c is not None:  # the batched call: the same outputs, noise included (one implementation)
            torch.testing.assert_close(c, a, rtol=0, atol=0)
    if kind == "grow":  # every group grows: conv weights both a consumer and a producer, never stored between
        assert any(c is None for c in batched)
    assert kernels.gather_bytes(calls) > 0


def test_host_benchmarks_run_and_restore_the_kernels(tmp_path):
    stats = pytest.importorskip("cgap_triton.kernels.stats")
    gather = pytest.importorskip("cgap_triton.kernels.gather")
    kernel, interpret = stats._channel_l1_l2_wg_kernel, os.environ.get("TRITON_INTERPRET")
    gather_kernel, threads = gather._gather_channels_kernel, torch.get_num_threads()
    workloads = {"tiny-vgg": tiny_workload().spec, "tiny-resnet": ModelSpec("resnet20", 5, 3, 8)}
    paths = host.run(
        common.environment(CPU),
        repeat=3,
        results_dir=tmp_path,
        workloads=workloads,
        change_workloads={"tiny-vgg": tiny_workload()},
    )
    assert [p.name for p in paths] == [
        f"host_{n}.{e}" for n in ("saliency_step", "width_change") for e in "json csv md".split()
    ]
    rows = json.loads(paths[0].read_text())["rows"]
    assert {r["workload"] for r in rows} == set(workloads)
    steps = [r for r in rows if r["path"].startswith(("old step", "plan step"))]
    assert len(steps) == 4 and all(r["old_over_this"] > 0 for r in steps)
    assert all(r["median_us"] > 0 and r["p20_us"] > 0 and r["p80_us"] > 0 for r in rows)
    changes = json.loads(paths[3].read_text())["rows"]
    paths = (host.OLD_PATH, host.BATCHED_PATH, host.BATCHED_CALL, host.CHECKED_CALL)
    assert {(r["change"], r["path"]) for r in changes} == {(kind, path) for kind in ("grow", "prune") for path in paths}
    assert all(r["median_ms"] > 0 and r["p20_ms"] > 0 for r in changes)
    assert all(r["old_over_this"] > 0 for r in changes if r["path"] in paths[:2])
    for r in changes:  # float32 throughout: one launch per change batched (growth: and its moments), per group before
        batched = 2 if r["change"] == "grow" and r["path"] != host.CHECKED_CALL else 1
        assert r["launches"] == (r["groups"] if r["path"] == host.OLD_PATH else batched)
    assert stats._channel_l1_l2_wg_kernel is kernel and os.environ.get("TRITON_INTERPRET") == interpret
    assert gather._gather_channels_kernel is gather_kernel and torch.get_num_threads() == threads


def test_compile_policy_verdict():
    rows = [
        {"policy": "always", "wall_seconds": 10.0},
        {"policy": "never", "wall_seconds": 8.0},
        {"policy": "auto", "wall_seconds": 8.3},
    ]
    verdict = compile_policy.compare(rows)
    assert verdict["within_tolerance"] and verdict["auto_vs_best_fixed"] == pytest.approx(8.3 / 8.0)
    rows[2]["wall_seconds"] = 8.5
    assert not compile_policy.compare(rows)["within_tolerance"]


def test_channel_stats_verdicts_read_the_prepared_call_and_its_device_time():
    def row(dtype, impl, us, gbps=0.0, pct=0.0, speedup=1.0):
        return {
            "workload": "vgg19",
            "dtype": dtype,
            "impl": impl,
            "median_us": us,
            "gb_per_s": gbps,
            "pct_of_copy": pct,
            "ours_speedup": speedup,
        }

    rows = []
    for dtype, replay_gbps in (("float32", 3000.0), ("bfloat16", 2400.0)):
        rows += [
            row(dtype, "triton plan", 55.0, pct=85.0),
            row(dtype, "triton plan, graph replay", 50.0, gbps=replay_gbps),
            row(dtype, "torch (a)", 600.0, speedup=11.0),
            row(dtype, "torch.compile (b)", 150.0, speedup=2.5),
        ]
    lines = kernels.verdicts(rows)
    assert "float32: 85% of copy bandwidth" in lines[0] and lines[0].endswith("targets met")
    assert "1.10× its kernel's device time" in lines[1] and lines[1].endswith(": met")
    assert "bf16 moves 0.80× the bytes per second of fp32" in lines[-1] and lines[-1].endswith("NOT met")


def test_checkpoint_cost_runs_both_ways(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "benchmarks.checkpoint_cost", "--quick", "--results-dir", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=root, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    (written,) = tmp_path.glob("*/checkpoint_cost.json")
    rows = json.loads(written.read_text())["rows"]
    assert [row["path"] for row in rows] == ["foreground", "background"]
    assert all(row["blocked_ms"] > 0 and row["write_ms"] >= row["blocked_ms"] for row in rows)
    assert not list(tmp_path.glob(".checkpoint-cost-*"))  # its temporary folder is gone


def test_the_gather_verdict_reads_surgerys_call_against_the_compiled_code():
    def rows(surgery_us, compiled_us):
        return [
            {"workload": "vgg19 grow", "impl": kernels.SURGERY_GATHER, "median_us": surgery_us},
            {"workload": "vgg19 grow", "impl": "torch.compile (b)", "median_us": compiled_us},
        ]

    assert kernels.gather_verdicts(rows(800.0, 1200.0))[0].endswith(": met")
    assert "NOT met" in kernels.gather_verdicts(rows(1100.0, 3000.0))[0]  # over 1 ms
    assert "NOT met" in kernels.gather_verdicts(rows(600.0, 500.0))[0]  # slower than the compiled code

"""torch.compile across many structural changes: one compilation per phase, no silent eager fallback."""

import json

import torch
from cli_runner import QUICK, SHORT, cli

from cgap_triton.cgap import GroupChange, WidthChange, apply_width_change
from cgap_triton.compile import TIMED_STEPS, WARMUP_STEPS, CompiledModel
from cgap_triton.models import ModelSpec, build_model
from cgap_triton.recipe import CompileConfig

SPEC = ModelSpec("vgg", 4, 3, 8, (8, "M", 12))


def train_step(fn, model, opt, x):
    loss = fn(x).square().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def change(model, i):
    """Alternate growth and pruning of both groups."""
    groups = {}
    for g in model.groups:
        width = model.widths[g.name]
        if i % 2 == 0:
            groups[g.name] = GroupChange.grow(width, torch.arange(2) % width, 2)
        else:
            groups[g.name] = GroupChange.keep(torch.arange(1, width))
    return WidthChange("grow" if i % 2 == 0 else "prune", groups)


def test_one_compilation_per_phase_over_twelve_changes():
    torch.manual_seed(0)
    model = build_model(SPEC)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    events = []
    compiled = CompiledModel(model, CompileConfig(enabled=True, backend="aot_eager"), events.append)
    x = torch.randn(4, 3, 8, 8)
    train_step(compiled, model, opt, x)
    compiled.step_finished(1.0, 1)
    changes = 12
    for i in range(changes):
        apply_width_change(model, change(model, i), optimizer=opt)
        compiled.invalidate(f"after change {i + 1}")
        for step in range(2):
            train_step(compiled, model, opt, x)
            compiled.step_finished(0.1, step)
    assert compiled.compilations == changes + 1
    assert [e.reason for e in events if e.kind == "compiling"][-1] == "after change 12"
    assert all(e.graphs >= 1 for e in events if e.kind == "compile")
    assert not [e for e in events if e.kind == "compile_fallback"]
    assert compiled.active
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)  # compiled == eager, last shapes
        model.train()


def test_a_silent_eager_fallback_is_reported():
    """Without the reset, dynamo gives up after recompile_limit shape changes and runs eager: caught."""
    torch.manual_seed(0)
    model = build_model(SPEC)
    events = []
    compiled = CompiledModel(model, CompileConfig(enabled=True, backend="aot_eager"), events.append)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        compiled(x)
        compiled.step_finished(1.0, 0)
        limit = torch._dynamo.config.recompile_limit
        for _ in range(limit + 2):
            apply_width_change(model, change(model, 0))  # shapes change, no invalidate()
            compiled(x)
    compiled.check_fallbacks(step=99)
    fallbacks = [e for e in events if e.kind == "compile_fallback"]
    assert len(fallbacks) == 1 and "ran eager" in fallbacks[0].detail
    torch.compiler.reset()


def test_cli_run_with_compile_recompiles_once_per_change(tmp_path):
    out = tmp_path / "compiled"
    result = cli("recipe", QUICK, *SHORT, "compile.enabled=true", 'compile.backend="aot_eager"', "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["structural_changes"] >= 2
    assert summary["recompiles"] == summary["structural_changes"] + 1
    assert summary["compile_seconds"] > 0 and summary["compile_fallbacks"] == 0
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    reasons = [e["reason"] for e in events if e.get("event") == "compiling"]
    assert reasons[:2] == ["at start", "after growth step 1"]
    assert "compiling after growth step 1" in result.stdout
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert not any("_orig_mod" in k for k in state["model"])


def test_policy_never_and_auto(tmp_path):
    never = CompiledModel(build_model(SPEC), CompileConfig(enabled=True, policy="never"), lambda e: None)
    never(torch.randn(2, 3, 8, 8))
    assert never.compiled is None
    auto = CompiledModel(build_model(SPEC), CompileConfig(enabled=True, policy="auto"), lambda e: None)
    for _ in range(WARMUP_STEPS):  # autotuning and first allocations: slow, and not typical
        auto.step_finished(30.0, 0)
    for _ in range(auto._probe):  # the next steps run eager, and are measured
        assert not auto.use_compiled
        auto.step_finished(1.0, 0)
    assert auto.use_compiled and auto.eager_step == 1.0  # the warm-up left out
    auto._compiled_times.extend([0.5, 0.5, 0.5])
    auto.compilations, auto.compile_seconds = 1, 10.0
    assert auto.pays_back(25) and not auto.pays_back(15)  # 0.5 s gained per step against 10 s per compile
    auto.invalidate("after growth step 1", steps_until_next_change=15)
    assert not auto.use_compiled  # too short a phase: run it eager
    auto._compiled_times.extend([1.2] * 8)
    assert not auto.pays_back(10_000)  # compiled is slower: never worth it


def test_auto_never_pays_for_a_compilation_that_cannot_pay_back():
    """Before any measurement, a phase too short for even an optimistic gain stays eager."""
    steps_left = {"n": 50}
    auto = CompiledModel(
        build_model(SPEC), CompileConfig(enabled=True, policy="auto"), lambda e: None, lambda: steps_left["n"]
    )
    while auto._probe or auto._warmup:
        auto.step_finished(0.01, 0)  # 10 ms steps: 50 × 5 ms gained would not pay for a 20 s inductor compile
    assert not auto.use_compiled
    auto.reconsider(10_000)  # a long fine-tuning phase: 10,000 × 5 ms = 50 s > 20 s
    assert auto.use_compiled


def test_auto_times_a_few_steps_per_phase_and_no_more():
    """Only the steps a decision rests on are timed (on a GPU, each one costs a synchronisation)."""
    auto = CompiledModel(build_model(SPEC), CompileConfig(enabled=True, policy="auto"), lambda e: None, lambda: 50)
    timed = []
    for _ in range(WARMUP_STEPS + TIMED_STEPS + 20):
        timed.append(auto.timing)
        auto.step_finished(0.01, 0)
    assert timed == [False] * WARMUP_STEPS + [True] * TIMED_STEPS + [False] * 20
    assert len(auto._eager_times) == TIMED_STEPS and not auto.use_compiled
    auto.invalidate("after growth step 1", steps_until_next_change=10_000)  # a long phase: worth compiling
    assert auto.use_compiled and auto.timing  # the compiling step is timed: its time is the compile cost
    auto(torch.randn(2, 3, 8, 8))
    auto.step_finished(2.0, 1)
    assert auto.compilations == 1 and not auto.timing  # warm-up at the new shapes, then timed again
    for _ in range(WARMUP_STEPS - 1):
        auto.step_finished(0.01, 2)
    assert auto.timing
    always = CompiledModel(build_model(SPEC), CompileConfig(enabled=True, policy="always"), lambda e: None)
    assert not always.timing  # no decision to make: nothing is timed

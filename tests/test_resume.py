"""Nothing lost: interrupts save a checkpoint, resume continues exactly, bad numbers and files are reported."""

import json
import signal

import pytest
import torch
from cli_runner import QUICK, ROOT, SHORT, cli, start, wait_for_event

from cgap_triton.checkpoint import CheckpointError, atomic_save, load_checkpoint

RUN = [*SHORT, "checkpoint.every=0"]  # checkpoints only at phase boundaries, the end, and on interrupts


def interrupt(out, after_event: str, signum: int, status: int) -> str:
    """Start a run, send ``signum`` once ``after_event`` is logged; check the exit status; return stderr."""
    proc = start(out, *RUN)
    wait_for_event(out, after_event, proc)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == status, stderr[-2000:]
    return stderr


def summary(out):
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "whole"
    result = cli("recipe", QUICK, *RUN, "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    return summary(out)


def test_interrupt_in_growth_then_resume_matches_the_uninterrupted_run(tmp_path, uninterrupted):
    out = tmp_path / "cut"
    stderr = interrupt(out, "grow", signal.SIGINT, 130)
    assert f"--resume {out}" in stderr and "Traceback" not in stderr
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["schedule"]["phase"] in ("seed", "grow"), "the interruption should fall inside the growth phase"
    assert 0 < state["progress"]["step"] < uninterrupted["steps"]

    resumed = cli("recipe", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = summary(out)
    assert after["widths"] == uninterrupted["widths"]
    assert after["structural_changes"] == uninterrupted["structural_changes"]
    assert after["steps"] == uninterrupted["steps"]
    for key in ("test_accuracy", "test_loss", "val_accuracy", "params", "peak_params", "train_macs"):
        assert after[key] == pytest.approx(uninterrupted[key], rel=1e-5, abs=1e-6), key


def test_sigterm_saves_and_exits_143(tmp_path):
    out = tmp_path / "term"
    interrupt(out, "start", signal.SIGTERM, 143)
    assert load_checkpoint(out / "checkpoint.pt")["progress"]["step"] >= 1
    assert not list(out.glob(".*.tmp"))


def test_nan_loss_stops_with_step_and_phase(tmp_path):
    out = tmp_path / "nan"
    result = cli("recipe", QUICK, *RUN, "optim.lr=1e30", 'optim.schedule="constant"', "--out", str(out))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "loss is nan" in result.stderr or "loss is inf" in result.stderr
    # The first bad step is named even though it is detected at the next check (a log step or decision).
    assert "step 2 (epoch 0, phase seed)" in result.stderr and "nan_policy" in result.stderr
    assert not (out / "summary.json").exists()
    assert not (out / "checkpoint.pt").exists()  # nothing the bad loss touched was saved


def test_nan_policy_skip_stops_a_run_that_only_skips(tmp_path):
    """A diverged run under "skip" would skip every step and save NaN weights: it stops at the limit instead."""
    out = tmp_path / "skip"
    overrides = ["optim.lr=1e30", 'optim.schedule="constant"', 'train.nan_policy="skip"', "train.epochs=2"]
    result = cli("recipe", QUICK, *RUN, *overrides, "train.skip_limit=4", "--out", str(out))
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "4 steps skipped in a row" in result.stderr and "train.skip_limit = 4" in result.stderr
    assert not (out / "summary.json").exists() and not (out / "model.pt").exists()


def test_nan_policy_skip_skips_rare_bad_batches(tmp_path):
    """A step whose loss is NaN is skipped (the weights never see it); the run finishes with finite weights."""
    from cgap_triton.recipe import load_recipe
    from cgap_triton.train import CGaPRecipe

    recipe = load_recipe(QUICK, [*RUN, 'train.nan_policy="skip"', "train.epochs=1", "dashboard.enabled=false"])
    out = tmp_path / "rare"
    run = CGaPRecipe(recipe, out)
    try:
        run.setup()
        forwards = []

        def poison_third_training_batch(module, inputs, output):
            if module.training:
                forwards.append(1)
                if len(forwards) == 3:
                    return output * float("nan")
            return output

        run.model.register_forward_hook(poison_third_training_batch)
        summary = run.train()
    finally:
        run.cleanup()
    assert summary["skipped_steps"] == 1 and summary["steps"] == len(forwards)
    saved = load_checkpoint(out / "model.pt")["state_dict"]
    assert all(torch.isfinite(t).all() for t in saved.values() if t.is_floating_point())
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e.get("event") == "skipped_step"] == [3]


def test_resume_refuses_a_corrupt_checkpoint(tmp_path):
    out = tmp_path / "corrupt"
    out.mkdir()
    (out / "recipe.toml").write_text((ROOT / "recipes" / "quickstart.toml").read_text())
    (out / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    result = cli("recipe", "--resume", str(out))
    assert result.returncode == 2 and "not a readable cgap_triton checkpoint" in result.stderr
    assert "Traceback" not in result.stderr


def test_resume_without_checkpoint(tmp_path):
    result = cli("recipe", "--resume", str(tmp_path))
    assert result.returncode == 2 and "no checkpoint.pt" in result.stderr


class Evil:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_checkpoints_load_without_running_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, path)
    with pytest.raises(CheckpointError, match="not a cgap_triton checkpoint") as refused:
        load_checkpoint(path)
    assert "weights_only=False" not in str(refused.value)  # never advise the unsafe load


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    atomic_save({"step": 1}, path)

    def broken_save(obj, f):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_resume_with_another_architecture_is_refused(tmp_path):
    out = tmp_path / "arch"
    interrupt(out, "grow", signal.SIGINT, 130)
    result = cli("recipe", QUICK, *RUN, "model.cfg=[16, 'M', 32]", "--resume", str(out))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "written by a different recipe" in result.stderr

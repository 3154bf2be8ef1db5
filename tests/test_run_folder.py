"""Run folders: one writer, no writes outside, no dead ends, clean after kill -9, any burst of signals."""

import json
import os
import signal
import subprocess
import sys
import time

from cli_runner import QUICK, SHORT, cli, start, wait_for_event

from cgap_triton.checkpoint import load_checkpoint

# A run long enough to be caught in the middle: checkpoints every epoch.
LONG = [*SHORT, "train.epochs=12", "checkpoint.every=1", "train.log_every=5"]


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def assert_no_duplicates(out):
    """Every logged step once and in order, every structural change once, one start."""
    lines = records(out)
    steps = [r["step"] for r in lines if r["kind"] == "step"]
    assert steps == sorted(set(steps)), "step lines repeated or out of order"
    changes = [(r["event"], r["step"], r.get("to")) for r in lines if r.get("event") in ("grow", "prune", "phase")]
    assert len(changes) == len(set(changes)), "a structural event was logged twice"
    assert sum(r.get("event") == "start" for r in lines) == 1


def test_one_process_per_folder_and_a_dead_owners_lock_is_taken_over(tmp_path):
    out = tmp_path / "run"
    first = start(out, *LONG)
    try:
        wait_for_event(out, "checkpoint", first)
        second = cli("recipe", "--resume", str(out))
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert f"another process (pid {first.pid}) is running in this folder" in second.stderr
        fresh = cli("recipe", QUICK, "--out", str(out))
        assert fresh.returncode == 2 and "exists and is not empty" in fresh.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=120)
    assert first.returncode == 143, stderr[-2000:]
    assert not (out / ".lock").exists()

    # A lock left by a process that died (kill -9) does not block the folder, nor does its temporary file.
    (out / ".lock").write_text(f"{dead_pid()} {os.uname().nodename}\n")
    (out / ".checkpoint.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    resumed = cli("recipe", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    assert json.loads((out / "summary.json").read_text())["recipe"] == "quickstart"


def test_kill_9_then_resume_leaves_no_temporaries_and_no_duplicate_lines(tmp_path):
    out = tmp_path / "killed"
    proc = start(out, *LONG)
    wait_for_event(out, "checkpoint", proc, count=2)
    time.sleep(0.3)  # past the checkpoint: lines logged now are lost with the process and logged again
    proc.kill()
    proc.communicate(timeout=60)
    state = load_checkpoint(out / "checkpoint.pt")
    resumed = cli("recipe", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not list(out.glob(".*"))  # no temporaries, no lock
    assert_no_duplicates(out)
    events = [r["event"] for r in records(out) if r["kind"] == "event"]
    assert events.count("resume") == 1
    resume = next(r for r in records(out) if r.get("event") == "resume")
    assert resume["step"] == state["progress"]["step"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["recipe"] == "quickstart"  # the recipe's name, not the folder's
    assert summary["steps"] == 12 * (summary["steps"] // 12)


def test_symbolic_links_in_a_run_folder_are_never_written_through(tmp_path):
    out = tmp_path / "linked"
    proc = start(out, *LONG)
    wait_for_event(out, "checkpoint", proc)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode == 130
    outside = tmp_path / "outside.txt"
    outside.write_text("not the run's")
    (out / "metrics.jsonl").unlink()
    (out / "metrics.jsonl").symlink_to(outside)
    result = cli("recipe", "--resume", str(out))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "metrics.jsonl: a symbolic link" in result.stderr
    assert outside.read_text() == "not the run's"


def test_a_burst_of_signals_ends_with_a_checkpoint_and_the_resume_line(tmp_path):
    out = tmp_path / "burst"
    proc = start(out, *LONG)
    wait_for_event(out, "grow", proc)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGINT, signal.SIGINT, signal.SIGTERM):
        proc.send_signal(signum)
        time.sleep(0.01)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]  # the first signal decides
    assert "Traceback" not in stderr and f"--resume {out}" in stderr
    assert stderr.rstrip().endswith(f"python -m cgap_triton recipe --resume {out}")
    assert load_checkpoint(out / "checkpoint.pt")["progress"]["step"] > 0
    assert not list(out.glob(".*"))


def test_a_signal_during_setup_leaves_nothing(tmp_path):
    out = tmp_path / "early"
    proc = start(out, *LONG)
    time.sleep(0.5)  # importing torch, loading data: long before the first step
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]
    assert "Traceback" not in stderr
    assert not out.exists()


def test_a_run_that_fails_before_its_first_checkpoint_can_be_started_again(tmp_path):
    out = tmp_path / "nan"
    bad = cli("recipe", QUICK, *SHORT, "optim.lr=1e30", 'optim.schedule="constant"', "--out", str(out))
    assert bad.returncode == 1 and "no checkpoint was written" in bad.stderr
    assert "--resume" not in bad.stderr
    assert not out.exists()  # nothing half-made is left
    # A folder that a killed run left before its first checkpoint is no dead end either.
    out.mkdir()
    (out / "recipe.toml").write_text("half")
    (out / "metrics.jsonl").write_text('{"kind": "event", "event": "start", "step": 0}\n')
    (out / ".lock").write_text(f"{dead_pid()} {os.uname().nodename}\n")
    again = cli("recipe", QUICK, *SHORT, "train.epochs=1", "--out", str(out))
    assert again.returncode == 0, again.stderr[-2000:]
    assert_no_duplicates(out)


def test_a_full_disk_stops_the_run_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    import errno

    import torch

    from cgap_triton import cli as command

    out = tmp_path / "full"
    real_save, saves = torch.save, []

    def save_until_the_disk_fills(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) >= 3:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_the_disk_fills)
    status = command.main(["recipe", QUICK, *LONG, "--no-dashboard", "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 1, err
    assert "No space left on device" in err and "the previous checkpoint, if any, is unchanged" in err
    assert "Traceback" not in err
    monkeypatch.undo()
    state = load_checkpoint(out / "checkpoint.pt")  # the second save's checkpoint, whole
    assert state["progress"]["step"] > 0
    assert not list(out.glob(".*"))  # no temporary, no lock

"""Several processes (gloo, CPU) through the real torchrun: structural changes in lock-step."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from cli_runner import QUICK, ROOT, SHORT

from cgap_triton.distributed import RankDisagreement, World, verify_identical


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node 2 -m cgap_triton ARGS`` on a free port, one thread per rank."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "0", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port())]
    return subprocess.run(
        [*cmd, "-m", "cgap_triton", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )


def test_two_ranks_grow_and_prune_in_lock_step(tmp_path):
    out = tmp_path / "ddp"
    result = torchrun("recipe", QUICK, *SHORT, "--out", str(out))
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["growth_steps"] >= 1 and summary["pruning_steps"] >= 1
    finals = dict(re.findall(r"\[rank (\d)\] final widths (\{.*\})", result.stderr))
    assert set(finals) == {"0", "1"}
    assert json.loads(finals["0"]) == json.loads(finals["1"]) == summary["widths"]
    assert result.stdout.count("test accuracy") == 1  # only rank 0 talks to the user


def _disagree(rank: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        verify_identical({"conv1": [8, 12]}, "an agreeing decision", World(rank, 2))
        try:
            verify_identical({"conv1": [8, 12 + rank]}, "the decision at step 7", World(rank, 2))
            queue.put((rank, "no error"))
        except RankDisagreement as err:
            queue.put((rank, str(err)))
    finally:
        dist.destroy_process_group()


def test_a_disagreement_between_ranks_is_caught_on_every_rank():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_disagree, args=(rank, port, queue)) for rank in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert set(results) == {0, 1}
    for message in results.values():
        assert "ranks disagree on the decision at step 7" in message, message


def test_global_batch_must_split_over_ranks(tmp_path):
    result = torchrun("recipe", QUICK, "data.batch_size=33", "--out", str(tmp_path / "x"), timeout=300)
    assert result.returncode != 0
    assert "data.batch_size: expected a global batch that divides evenly over the 2 ranks" in result.stderr
    assert not (tmp_path / "x").exists()


def test_a_two_rank_run_resumes_on_one_rank(tmp_path):
    """Interrupt torchrun (it forwards the signal to every rank), then resume in a single process."""
    out = tmp_path / "ddp-resume"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "0", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port())]
    proc = subprocess.Popen(
        [*cmd, "-m", "cgap_triton", "recipe", QUICK, *SHORT, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    deadline = time.time() + 300
    while not ((out / "metrics.jsonl").is_file() and '"event": "grow"' in (out / "metrics.jsonl").read_text()):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:] if proc.stderr else ""
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=300)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["progress"]["step"] > 0
    resumed = subprocess.run(
        [sys.executable, "-m", "cgap_triton", "recipe", "--resume", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 1 and summary["pruning_steps"] >= 1
    start = next(json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"start"' in line)
    assert start["world_size"] == 2 and summary["steps"] == start["total_steps"]  # same global batches, all done

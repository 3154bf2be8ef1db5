"""Checkpoints written in the background: training goes on during the write, the file holds the state of the
moment it was taken, and a write that fails stops the run with the path and the reason."""

from __future__ import annotations

import errno
import threading
from pathlib import Path

import pytest
import torch

from cgap_triton import checkpoint
from cgap_triton.checkpoint import CheckpointWriter, load_checkpoint, to_host
from cgap_triton.health import TrainingStopped
from cgap_triton.recipe import load_recipe

ROOT = Path(__file__).resolve().parent.parent


def test_the_file_holds_the_state_when_it_was_taken_while_training_goes_on(tmp_path, monkeypatch):
    started, release = threading.Event(), threading.Event()
    real = checkpoint.atomic_save

    def slow_save(obj, path):
        started.set()
        assert release.wait(10)
        real(obj, path)

    monkeypatch.setattr(checkpoint, "atomic_save", slow_save)
    weights, phases = torch.zeros(3), [{"step": 0, "phase": "seed"}]
    writer = CheckpointWriter()
    writer.submit(to_host({"weights": weights, "phases": phases}), tmp_path / "checkpoint.pt")
    assert started.wait(10)
    assert writer.busy and not (tmp_path / "checkpoint.pt").exists()
    weights += 1  # the next steps change the live tensors and lists in place
    phases.append({"step": 9, "phase": "grow"})
    release.set()
    writer.wait()
    saved = load_checkpoint(tmp_path / "checkpoint.pt")
    assert torch.equal(saved["weights"], torch.zeros(3)) and saved["phases"] == [{"step": 0, "phase": "seed"}]
    assert not writer.busy


def test_a_failed_write_is_raised_once_by_the_next_wait(tmp_path, monkeypatch):
    def full_disk(obj, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "atomic_save", full_disk)
    writer = CheckpointWriter()
    writer.submit({"step": 1}, tmp_path / "checkpoint.pt")
    with pytest.raises(OSError, match="No space left"):
        writer.wait()
    writer.wait()  # reported once


def test_a_checkpoint_that_cannot_be_written_stops_the_run(tmp_path, monkeypatch):
    from cgap_triton.train import CGaPRecipe

    recipe = load_recipe(
        ROOT / "recipes" / "shapes_vgg.toml",
        ["data.shapes_images=300", "data.val_size=100", "data.test_size=50", "train.epochs=2"],
    )

    def full_disk(obj, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "atomic_save", full_disk)  # the background writer's
    trainer = CGaPRecipe(recipe, tmp_path / "run")
    try:
        trainer.setup()
        with pytest.raises(TrainingStopped) as stopped:
            trainer.train()
    finally:
        trainer.cleanup()
    assert str(stopped.value) == (
        f"{tmp_path / 'run' / 'checkpoint.pt'}: could not be written (No space left on device); "
        "the previous checkpoint, if any, is unchanged"
    )
    assert not (tmp_path / "run" / "summary.json").exists()

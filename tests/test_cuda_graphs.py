"""The training step as one CUDA graph: what the capture changes (nothing) on any machine, and on a CUDA
device that replays train exactly as the eager step does (run by ``make gpu-check``)."""

from __future__ import annotations

import pytest
import torch

from cgap_triton.cgap import SaliencyTracker
from cgap_triton.models import ModelSpec, build_model
from cgap_triton.step import GraphedStep, TrainStep, graphable_optimizer

SPEC = ModelSpec("vgg", 10, 3, 16, (8, "M", 16, "M", 16))


def setup(device, graphable: bool, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(SPEC, {"conv1": 6, "conv2": 12, "conv3": 16}, device=device)
    if graphable:  # the learning rate a device tensor, SGD fused: the form a graph captures
        optimizer = graphable_optimizer(
            "sgd", model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, device=device
        )[0]
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    tracker = SaliencyTracker(model, "taylor", 0.9, impl="torch" if device == "cpu" else "auto")
    return model, optimizer, tracker, TrainStep(model, optimizer, tracker, device_type=torch.device(device).type)


def batch(device, k: int):
    generator = torch.Generator().manual_seed(100 + k)  # drawn on the CPU: the same batches on every device
    x = torch.randn(8, 3, 16, 16, generator=generator, device="cpu").to(device)
    return x, torch.randint(0, 10, (8,), generator=generator, device="cpu").to(device)


def test_warm_up_before_a_capture_leaves_no_trace():
    """The warm-up steps a capture runs are undone: weights, BN statistics, momentum (absent before the first
    step: zero, as before one) and saliency are what they were."""
    model, optimizer, tracker, step = setup("cpu", graphable=False)
    step(*batch("cpu", 0), 0)  # momentum and saliency exist for some state, then more steps change them
    graphed = GraphedStep(step, model)
    before = [t.detach().clone() for t in (*model.parameters(), *model.buffers())]
    momentum = {p: s["momentum_buffer"].clone() for p, s in optimizer.state.items()}
    saliency = {k: v.clone() for k, v in tracker.buffers.items()}
    saved = graphed._snapshot()
    for k in range(3):
        step(*batch("cpu", k + 1), k + 1)
    graphed._restore(saved)
    assert all(torch.equal(a, b) for a, b in zip(before, (*model.parameters(), *model.buffers())))
    assert all(torch.equal(optimizer.state[p]["momentum_buffer"], m) for p, m in momentum.items())
    assert all(torch.equal(tracker.buffers[k], v) for k, v in saliency.items())

    fresh_model, fresh_optimizer, fresh_tracker, fresh_step = setup("cpu", graphable=False)
    graphed = GraphedStep(fresh_step, fresh_model)
    saved = graphed._snapshot()
    fresh_step(*batch("cpu", 0), 0)
    graphed._restore(saved)
    assert all(not s["momentum_buffer"].any() for s in fresh_optimizer.state.values())  # as before a first step


def test_saliency_that_skips_steps_cannot_be_graphed():
    model, optimizer, _, _ = setup("cpu", graphable=False)
    tracker = SaliencyTracker(model, "taylor", 0.9, every=2)
    with pytest.raises(ValueError, match="cgap.importance.every = 1"):
        GraphedStep(TrainStep(model, optimizer, tracker), model)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_replays_train_as_the_eager_step_does():
    eager = setup("cuda", graphable=True)
    graphed_parts = setup("cuda", graphable=True)
    model, optimizer, tracker, step = graphed_parts
    graphed = GraphedStep(step, model)
    for k in range(6):
        x, y = batch("cuda", k)
        eager[3](x, y, k)
        graphed(x, y, k)
    assert graphed.captures == 1
    for a, b in zip(eager[0].parameters(), model.parameters()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    graphed.set_lr(0.0)
    frozen = [p.detach().clone() for p in model.parameters()]
    graphed(*batch("cuda", 9), 9)  # lr 0 reaches the replay: only the momentum moves
    assert all(torch.allclose(a, b) for a, b in zip(frozen, model.parameters()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_trainers_step_never_waits_for_the_gpu(tmp_path):
    """The trainer's whole step on CUDA — drawing and augmenting the batch, the graph replay, the loss watch and
    the counters — makes no host sync (one would stall the queue a replay relies on); only the capture may."""
    from pathlib import Path

    from cgap_triton.recipe import load_recipe
    from cgap_triton.train import CGaPRecipe

    recipe = load_recipe(
        Path(__file__).parent.parent / "recipes" / "shapes_vgg.toml",
        ["data.shapes_images=300", "data.val_size=100", "data.test_size=50", "train.epochs=1", "train.device=cuda"]
        + ["compile.enabled=false", "data.batch_size=32"],
    )
    trainer = CGaPRecipe(recipe, tmp_path / "run")
    with torch.device("cpu"):  # no default device, as in a real run (gpu-check's tests make CUDA the default)
        try:
            trainer.setup()
            assert trainer.graphed is not None  # auto: graphs on for one CUDA device
            batches = trainer.batches.epoch(0)
            trainer._train_step(*next(batches))  # the capture
            torch.cuda.set_sync_debug_mode("error")
            try:
                for _ in range(3):
                    loss, correct = trainer._train_step(*next(batches))
            finally:
                torch.cuda.set_sync_debug_mode("default")
            assert trainer.graphed.captures == 1 and trainer.progress.step == 4
            assert torch.isfinite(loss) and 0 <= int(correct) <= 32
        finally:
            trainer.cleanup()

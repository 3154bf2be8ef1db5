"""SaliencyTracker on a prepared ChannelStatsPlan: the same buffers as the per-step one-shot call it replaces.

The reference is the tracker as it was (``model.get_parameter`` per group and a fully checked ``channel_stats`` call
every step), run on a copy of the model through the same steps and the same structural changes; the plan must
give the same bits, seed the EMA on the first update, honour ``every``, and rebuild only when its tensors change.
"""

from __future__ import annotations

import copy
import weakref

import pytest
import torch
from cgap_triton.kernels import channel_stats

from cgap_triton.cgap import GroupChange, WidthChange, apply_width_change
from cgap_triton.cgap.importance import SaliencyTracker
from cgap_triton.models import ModelSpec, build_model

SPEC = ModelSpec("vgg", 5, 3, 8, (6, "M", 10, 7))


class OneShotTracker(SaliencyTracker):
    """The tracker before plans: parameters looked up by name and every argument checked, each step."""

    @torch.no_grad()
    def update(self, step: int) -> None:
        if step % self.every:
            return
        weights = [self.model.get_parameter(g.saliency) for g in self.model.groups]
        grads = None
        if self.needs_grads:
            grads = [w.grad for w in weights]
            if any(g is None for g in grads):
                return
        momentum = self.momentum if self.updates else None
        out = [self.buffers[g.name] for g in self.model.groups]
        channel_stats(weights, grads, out=out, momentum=momentum, impl=self.impl)
        self.updates += 1


def surgery(model, opt, tracker, step: int) -> None:
    """A pruning step and a growth step, as training applies them (then NHWC restored, as train.py does)."""
    if step == 3:
        change = WidthChange("prune", {"conv1": GroupChange.keep(torch.tensor([0, 2, 3, 5]))})
    else:
        change = WidthChange("grow", {"conv2": GroupChange.grow(model.widths["conv2"], torch.tensor([1, 4]), 2)})
    apply_width_change(model, change, optimizer=opt, saliency=tracker.buffers)
    model.to(memory_format=torch.channels_last)  # p.data swapped again: same Parameters, new storage


def train_both(criterion: str, every: int, impl: str, set_to_none: bool, steps: int = 8):
    """Train a model and its copy through the same steps and changes, one tracked by each tracker; compare the
    buffers after every step. Returns the plan tracker and the plan it held after each step."""
    torch.manual_seed(0)
    model = build_model(SPEC)
    models = [model, copy.deepcopy(model)]
    trackers = [
        SaliencyTracker(models[0], criterion, 0.8, every, impl=impl),
        OneShotTracker(models[1], criterion, 0.8, every, impl=impl),
    ]
    opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in models]
    for tracker in trackers:
        tracker.update(0)  # before any backward: no gradients, nothing to fold in (taylor), or a first seed
    plans = []
    for step in range(steps):
        x = torch.randn(4, 3, 8, 8)
        for m, opt, tracker in zip(models, opts, trackers):
            if step in (3, 5):
                surgery(m, opt, tracker, step)
            opt.zero_grad(set_to_none=set_to_none)
            loss = m(x.to(memory_format=torch.channels_last)).square().mean()
            loss.backward()
            del loss  # its graph would pin the old shapes through the next surgery
            tracker.update(step)
            opt.step()
        plans.append(trackers[0]._plan)
        assert trackers[0].updates == trackers[1].updates
        assert list(trackers[0].buffers) == list(trackers[1].buffers)
        for name, buffer in trackers[0].buffers.items():
            assert torch.equal(buffer, trackers[1].buffers[name]), f"step {step}, group {name}"
            assert buffer.shape == (models[0].widths[name], 4)
    assert trackers[0].scores().keys() == trackers[1].scores().keys()
    assert all(torch.equal(a, b) for a, b in zip(trackers[0].scores().values(), trackers[1].scores().values()))
    return trackers[0], plans


@pytest.mark.parametrize(
    "criterion, every, impl",
    [
        ("taylor", 1, "torch"),
        ("taylor", 1, "triton"),
        ("taylor_signed", 2, "torch"),
        ("l1", 1, "triton"),
        ("l2", 3, "torch"),
    ],
)
def test_plan_tracker_gives_the_one_shot_trackers_bits(criterion, every, impl):
    tracker, plans = train_both(criterion, every, impl, set_to_none=False)
    assert tracker.updates == len(range(0, 8, every)) + (criterion in ("l1", "l2"))  # l1/l2 also at the 0th call
    if (criterion, every) == ("taylor", 1):
        # Built at the first update; kept while the tensors stay; rebuilt after each structural change only.
        assert plans[0] is plans[1] is plans[2]
        assert plans[3] is not plans[2] and plans[3] is plans[4]
        assert plans[5] is not plans[4] and plans[5] is plans[6] is plans[7]


def test_gradients_freed_every_step_still_give_the_same_bits():
    """zero_grad(set_to_none=True): new gradient tensors every step, so a new plan every step, same results."""
    train_both("taylor", 1, "torch", set_to_none=True, steps=5)


def test_first_update_seeds_the_average_and_updates_wait_for_gradients():
    torch.manual_seed(0)
    model = build_model(SPEC)
    tracker = SaliencyTracker(model, "taylor", 0.5)
    tracker.update(0)
    assert tracker.updates == 0 and tracker._plan is None  # no gradients yet
    model(torch.randn(2, 3, 8, 8)).square().mean().backward()
    tracker.update(0)
    weights = [model.get_parameter(g.saliency) for g in model.groups]
    fresh = channel_stats(weights, [w.grad for w in weights], impl="torch")
    assert all(torch.equal(tracker.buffers[g.name], s) for g, s in zip(model.groups, fresh))  # seeded, not blended
    tracker.update(0)
    assert all(torch.equal(tracker.buffers[g.name], s) for g, s in zip(model.groups, fresh))  # 0.5 s + 0.5 s


def test_updates_look_up_no_parameter_and_invalidate_rebuilds():
    torch.manual_seed(0)
    model = build_model(SPEC)
    tracker = SaliencyTracker(model, "taylor", 0.9)
    model(torch.randn(2, 3, 8, 8)).square().mean().backward()

    def refuse(name):
        raise AssertionError(f"get_parameter({name!r}) during an update")

    model.get_parameter = refuse  # resolved once, in __init__
    tracker.update(0)
    plan = tracker._plan
    tracker.update(1)
    assert tracker._plan is plan
    tracker.invalidate()
    assert tracker._plan is None
    tracker.update(2)
    assert tracker._plan is not None and tracker._plan is not plan and tracker.updates == 3


def test_state_dict_format_and_resume():
    torch.manual_seed(0)
    model = build_model(SPEC)
    tracker = SaliencyTracker(model, "taylor", 0.9)
    model(torch.randn(2, 3, 8, 8)).square().mean().backward()
    tracker.update(0)
    state = tracker.state_dict()
    assert set(state) == {"buffers", "updates"} and state["updates"] == 1
    assert list(state["buffers"]) == [g.name for g in model.groups]
    assert all(b.device.type == "cpu" and b.dtype == torch.float32 for b in state["buffers"].values())
    resumed = SaliencyTracker(model, "taylor", 0.9)
    resumed.load_state_dict(copy.deepcopy(state))
    tracker.update(1)
    resumed.update(1)
    assert resumed.updates == tracker.updates == 2
    assert all(torch.equal(resumed.buffers[k], tracker.buffers[k]) for k in tracker.buffers)
    plan = tracker._plan
    tracker.load_state_dict(state)  # new buffer tensors: the plan must not write into the old ones
    assert tracker._plan is None
    tracker.update(2)
    assert tracker._plan is not plan and all(tracker._plan.out[i] is b for i, b in enumerate(tracker.buffers.values()))


def test_surgery_frees_the_gradients_the_plan_was_built_on():
    """The plan holds gradients weakly: ``p.grad = None`` in surgery frees them, as it did before plans."""
    torch.manual_seed(0)
    model = build_model(SPEC)
    tracker = SaliencyTracker(model, "taylor", 0.9)
    model(torch.randn(2, 3, 8, 8)).square().mean().backward()
    tracker.update(0)
    grads = [weakref.ref(model.get_parameter(g.saliency).grad) for g in model.groups]
    change = WidthChange("prune", {"conv1": GroupChange.keep(torch.tensor([0, 2, 3, 5]))})
    apply_width_change(model, change, saliency=tracker.buffers)
    assert all(grad() is None for grad in grads)
    model(torch.randn(2, 3, 8, 8)).square().mean().backward()
    tracker.update(1)
    assert tracker.updates == 2 and tracker.buffers["conv1"].shape == (4, 4)

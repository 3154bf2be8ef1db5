"""Surgery invariants: growth that preserves the function, identity pruning, state that follows the map."""

import pytest
import torch

from cgap_triton.cgap import GroupChange, WidthChange, apply_width_change
from cgap_triton.cgap.importance import SaliencyTracker
from cgap_triton.models import ModelSpec, build_model

SPEC = ModelSpec("vgg", 5, 3, 8, (6, "M", 10, 7))
RES = ModelSpec("resnet20", 5, 3, 8)


def trained(spec=SPEC, widths=None, optimizer="sgd", steps=3):
    torch.manual_seed(0)
    model = build_model(spec, widths)
    opt = (
        torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        if optimizer == "sgd"
        else torch.optim.Adam(model.parameters(), lr=0.01)
    )
    for _ in range(steps):  # non-trivial BN statistics and optimizer state
        loss = model(torch.randn(4, 3, 8, 8)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    del loss
    return model, opt


def assert_same_function(after, before):
    """Equal up to float32 rounding. A conv at a new width may sum its inputs in another order (CPUs differ),
    so the bits are not the contract; a tolerance scaled to the outputs is, and a real change is far above it."""
    after, before = after.detach(), before.detach()
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5 * float(before.abs().max()))


def grow_all(model, count=3, **decisions):
    groups = {}
    for g in model.groups:
        width = model.widths[g.name]
        groups[g.name] = GroupChange.grow(width, torch.arange(count) % width, count, **decisions)
    return WidthChange("grow", groups)


@pytest.mark.parametrize("spec", [SPEC, RES], ids=["vgg", "resnet"])
@pytest.mark.parametrize("init", ["copy_zero_out", "split", "random_zero_out"])
def test_growth_without_noise_preserves_the_function(spec, init):
    model, opt = trained(spec)
    model.eval()
    x = torch.randn(3, 3, 8, 8)
    before = model(x)
    apply_width_change(model, grow_all(model, init=init, noise=0.0), optimizer=opt)
    assert_same_function(model(x), before)
    if init != "split":  # the new units' outgoing columns are exactly zero (where no new unit reads them)
        grown = {name for group in model.groups for name, _ in group.producers}
        for group in model.groups:
            width = model.widths[group.name]
            for name, dim in group.consumers:
                if name not in grown:
                    assert not model.tensor(name).narrow(dim, width - 3, 3).any(), name


def test_growth_with_noise_changes_new_filters_only_slightly():
    model, opt = trained()
    old = model.features.conv1.conv.weight.detach().clone()
    x = torch.randn(3, 3, 8, 8)
    model.eval()
    before = model(x)
    apply_width_change(model, grow_all(model, init="copy_zero_out", noise=0.01, seed=3), optimizer=opt)
    new = model.features.conv1.conv.weight.detach()
    assert torch.equal(new[:6], old)  # parents untouched
    children = new[6:]
    assert not torch.equal(children, old[:3])
    torch.testing.assert_close(children, old[:3], atol=0.2 * float(old.std()), rtol=0)
    assert_same_function(model(x), before)  # zero outgoing columns: still the same function


def test_pruning_that_keeps_everything_is_the_identity():
    model, opt = trained()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    momenta = {p: opt.state[p]["momentum_buffer"].clone() for p in model.parameters()}
    change = WidthChange("prune", {g.name: GroupChange.keep(torch.arange(model.widths[g.name])) for g in model.groups})
    apply_width_change(model, change, optimizer=opt)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    for p in model.parameters():
        assert torch.equal(opt.state[p]["momentum_buffer"], momenta[p])


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_optimizer_state_follows_the_index_map(optimizer):
    model, opt = trained(optimizer=optimizer)
    keys = ["momentum_buffer"] if optimizer == "sgd" else ["exp_avg", "exp_avg_sq"]
    w1, w2 = model.features.conv1.conv.weight, model.features.conv2.conv.weight
    params_before = [id(p) for p in model.parameters()]
    state1 = {k: opt.state[w1][k].clone() for k in keys}
    state2 = {k: opt.state[w2][k].clone() for k in keys}
    kept = torch.tensor([5, 0, 3])
    apply_width_change(model, WidthChange("prune", {"conv1": GroupChange.keep(kept)}), optimizer=opt)
    for k in keys:
        assert torch.equal(opt.state[w1][k], state1[k][kept])  # producer rows
        assert torch.equal(opt.state[w2][k], state2[k][:, kept])  # consumer columns
    grow = GroupChange.grow(3, torch.tensor([2, 2]), 2, init="copy_zero_out")
    apply_width_change(model, WidthChange("grow", {"conv1": grow}), optimizer=opt)
    for k in keys:
        assert torch.equal(opt.state[w1][k][:3], state1[k][kept])
        assert torch.equal(opt.state[w1][k][3:], torch.zeros_like(opt.state[w1][k][3:]))  # new units start at zero
        assert torch.equal(opt.state[w2][k][:, 3:], torch.zeros_like(opt.state[w2][k][:, 3:]))
    assert [id(p) for p in model.parameters()] == params_before  # same Parameter objects
    assert model.features.conv1.conv.out_channels == 5 and model.features.conv2.conv.in_channels == 5
    assert model.features.conv1.bn.num_features == 5
    loss = model(torch.randn(2, 3, 8, 8)).sum()  # the optimizer keeps working on the changed shapes
    loss.backward()
    opt.step()


def test_saliency_is_shared_between_parent_and_child():
    model, _ = trained()
    tracker = SaliencyTracker(model)
    tracker.buffers["conv1"] = torch.arange(1, 25, dtype=torch.float32).view(6, 4)
    before = tracker.buffers["conv1"].clone()
    apply_width_change(
        model, WidthChange("grow", {"conv1": GroupChange.grow(6, torch.tensor([4]), 1)}), saliency=tracker.buffers
    )
    after = tracker.buffers["conv1"]
    assert after.shape == (7, 4)
    assert torch.equal(after[4], before[4] / 2) and torch.equal(after[6], before[4] / 2)
    assert torch.equal(after[:4], before[:4]) and torch.equal(after[5], before[5])


def test_unknown_group_is_refused():
    model, _ = trained()
    with pytest.raises(ValueError, match="unknown group 'conv9'"):
        apply_width_change(model, WidthChange("prune", {"conv9": GroupChange.keep(torch.arange(2))}))


@pytest.mark.parametrize("init", ["copy_zero_out", "split"])
def test_triton_surgery_computes_what_the_reference_surgery_computes(init):
    """Grow then prune through the Triton gather (interpreter) and through the torch twin: same model."""
    results = []
    for impl in ("triton", "torch"):
        model, opt = trained()
        tracker = SaliencyTracker(model)
        grow = grow_all(model, count=2, init=init, noise=0.0)
        apply_width_change(model, grow, optimizer=opt, saliency=tracker.buffers, impl=impl)
        keep = {g.name: GroupChange.keep(torch.tensor([0, 2, 3, model.widths[g.name] - 1])) for g in model.groups}
        apply_width_change(model, WidthChange("prune", keep), optimizer=opt, saliency=tracker.buffers, impl=impl)
        momenta = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]
        results.append((model.state_dict(), momenta, {k: v.clone() for k, v in tracker.buffers.items()}))
    (state_t, mom_t, sal_t), (state_r, mom_r, sal_r) = results
    for key in state_r:
        assert torch.equal(state_t[key], state_r[key]), key
    assert all(torch.equal(a, b) for a, b in zip(mom_t, mom_r))
    assert all(torch.equal(sal_t[k], sal_r[k]) for k in sal_r)


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_noise_on_copied_filters_is_relative_to_the_weight_as_earlier_groups_leave_it(impl):
    """A child is its parent plus noise of std ``noise × std(weight)``, the weight taken as the change's earlier
    groups leave it (a conv's new input columns are zeros by then). The Triton path scales the noise by that std on
    the device; both paths must draw noise of that size."""
    spec = ModelSpec("vgg", 5, 3, 8, (16, "M", 32, 32))
    model, opt = trained(spec)
    w2 = model.features.conv2.conv.weight.detach().clone()
    noise, count = 0.5, 8
    apply_width_change(
        model, grow_all(model, count=count, init="copy_zero_out", noise=noise, seed=5), optimizer=opt, impl=impl
    )
    grown = model.features.conv2.conv.weight.detach()  # [32 + 8, 16 + 8, 3, 3]
    as_left = torch.cat([w2, torch.zeros(32, count, 3, 3)], 1)  # conv1's growth zeroed its new input columns
    drawn = (grown[32:] - as_left[:count]) / (noise * float(as_left.std()))
    assert 0.9 < float(drawn.std()) < 1.1, float(drawn.std())
    assert abs(float(drawn.mean())) < 0.1
    assert torch.equal(grown[:32], as_left)  # parents carry no noise

"""The growth rules that make growing worth it: children that differ, a saliency that sees the loss, pruning
that counts what it frees, growth that reaches full width when asked."""

import pytest
import torch
import torch.nn.functional as F

from cgap_triton.cgap import GroupChange, Schedule, WidthChange, apply_width_change
from cgap_triton.cgap.children import orthogonal_filters, twin_fraction
from cgap_triton.cgap.importance import SaliencyTracker
from cgap_triton.models import ModelSpec, SizeOracle, build_model
from cgap_triton.recipe import Recipe

SPEC = ModelSpec("vgg", 5, 3, 8, (12, "M", 16, 16))
RES = ModelSpec("resnet20", 5, 3, 8)


def trained(spec=SPEC, steps=3):
    torch.manual_seed(0)
    model = build_model(spec)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(steps):
        loss = F.cross_entropy(model(torch.randn(8, 3, 8, 8)), torch.randint(0, 5, (8,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, opt


def grow_every_group(model, count, init):
    groups = {}
    for k, g in enumerate(model.groups):
        width = model.widths[g.name]
        parents = None if init.endswith("random_zero_out") or init.startswith("orthogonal") else torch.arange(count)
        groups[g.name] = GroupChange.grow(width, parents, count, init=init, noise=0.0, seed=11 + k)
    return WidthChange("grow", groups)


@pytest.mark.parametrize("spec", [SPEC, RES], ids=["vgg", "resnet"])
def test_orthogonal_children_keep_the_function(spec):
    model, opt = trained(spec)
    model.eval()
    x = torch.randn(4, 3, 8, 8)
    before = model(x).detach()
    apply_width_change(model, grow_every_group(model, 4, "orthogonal_zero_out"), optimizer=opt)
    after = model(x).detach()
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5 * float(before.abs().max()))


def test_orthogonal_children_are_orthogonal_to_the_layer_and_to_each_other():
    existing = torch.randn(6, 4, 3, 3)
    new = orthogonal_filters(existing, 5, seed=3)
    assert new.shape == (5, 4, 3, 3)
    flat_old, flat_new = existing.reshape(6, -1), new.reshape(5, -1)
    assert (flat_new @ flat_old.T).abs().max() < 1e-4 * flat_new.norm() * flat_old.norm()
    gram = flat_new @ flat_new.T
    assert (gram - torch.diag(torch.diag(gram))).abs().max() < 1e-4 * gram.diag().max()
    torch.testing.assert_close(flat_new.norm(dim=1).mean(), flat_old.norm(dim=1).mean(), rtol=1e-5, atol=0)
    assert torch.equal(new, orthogonal_filters(existing, 5, seed=3))  # deterministic in the seed


def test_copied_children_are_twins_and_orthogonal_ones_are_not():
    fractions = {}
    for init in ("copy_zero_out", "orthogonal_zero_out"):
        model, opt = trained()
        apply_width_change(model, grow_every_group(model, 6, init), optimizer=opt)
        conv = model.features.conv2.conv.weight  # 16 units: 10 old and 6 new
        fractions[init] = twin_fraction(conv)
    assert fractions["copy_zero_out"] >= 12 / 22  # each child and its parent
    assert fractions["orthogonal_zero_out"] == 0.0


def loss_of(model, x, y):
    return F.cross_entropy(model(x), y)


@pytest.mark.parametrize("criterion", ["consumer_taylor", "bn_taylor"])
def test_the_effect_saliency_is_the_loss_derivative_of_removing_the_unit(criterion):
    """Per batch, the statistic under the square is dL/dt of scaling the unit's output by (1 - t) at t = 0,
    checked against finite differences on a tiny model, unit by unit."""
    model, _ = trained()
    model.eval()  # fixed BN statistics: the loss is a function of the weights alone
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 5, (16,))
    tracker = SaliencyTracker(model, criterion, momentum=0.9)
    model.zero_grad()
    loss_of(model, x, y).backward()
    with torch.no_grad():
        effects = tracker._batch_effect()
    group = model.groups[1]  # conv2: consumer conv3's columns; BN conv2.bn
    effect = effects[1]
    model.double()  # finite differences in float64: a small step, no ReLU crossed, no rounding in the way
    x = x.double()
    t = 1e-5
    for unit in range(model.widths[group.name]):
        with torch.no_grad():
            if criterion == "consumer_taylor":
                tensors = [model.features.conv3.conv.weight[:, unit]]
            else:
                tensors = [
                    model.features.conv2.bn.weight[unit : unit + 1],
                    model.features.conv2.bn.bias[unit : unit + 1],
                ]
            saved = [v.clone() for v in tensors]
            for v in tensors:
                v.mul_(1 - t)
            shrunk = loss_of(model, x, y)
            for v, s in zip(tensors, saved):
                v.copy_(s)
            for v in tensors:
                v.mul_(1 + t)
            grown = loss_of(model, x, y)
            for v, s in zip(tensors, saved):
                v.copy_(s)
        derivative = (shrunk - grown) / (2 * t)  # d/dt L(scale 1 - t) at 0 = -(unit's Σ a·∂L/∂a)
        torch.testing.assert_close(-derivative.float(), effect[unit], rtol=1e-3, atol=1e-7)


def test_the_effect_saliency_ranks_units_as_removing_them_does():
    model, _ = trained(steps=20)
    model.eval()
    x, y = torch.randn(64, 3, 8, 8), torch.randint(0, 5, (64,))
    tracker = SaliencyTracker(model, "consumer_taylor")
    model.zero_grad()
    base = loss_of(model, x, y)
    base.backward()
    with torch.no_grad():
        estimate = tracker._batch_effect()[2] ** 2  # conv3, read by the classifier
        removal = []
        for unit in range(model.widths["conv3"]):
            column = model.classifier.weight[:, unit].clone()
            model.classifier.weight[:, unit] = 0
            removal.append(float(loss_of(model, x, y) - base) ** 2)
            model.classifier.weight[:, unit] = column
    rank = torch.tensor(removal).argsort().argsort().float()
    rank_estimate = estimate.argsort().argsort().float()
    spearman = torch.corrcoef(torch.stack([rank, rank_estimate]))[0, 1]
    assert spearman > 0.8


def test_newborns_start_at_their_group_mean():
    model, opt = trained()
    tracker = SaliencyTracker(model, "consumer_taylor", newborn="mean")
    model.zero_grad()
    loss_of(model, torch.randn(8, 3, 8, 8), torch.randint(0, 5, (8,))).backward()
    tracker.update(0)
    old = {k: v.clone() for k, v in tracker.buffers.items()}
    change = grow_every_group(model, 2, "orthogonal_zero_out")
    apply_width_change(model, change, optimizer=opt, saliency=tracker.buffers)
    tracker.after_change(change)
    for name, buffer in tracker.buffers.items():
        torch.testing.assert_close(buffer[-2:], old[name].mean(0).expand(2, -1))
        torch.testing.assert_close(buffer[:-2], old[name])


FULL_SPEC = ModelSpec("vgg", 10, 1, 8, (8, "M", 64, 64))


def schedule(**dotted):
    sizes = SizeOracle(FULL_SPEC)
    cfg = Recipe().replace(**{"model.round_to": 4, "cgap.prune.target_reduction": 0.9, **dotted}).cgap
    full = FULL_SPEC.full_widths()
    return Schedule(cfg, steps_per_epoch=10, epochs=10, full_widths=full, round_to=4, params_of=sizes.params), sizes


def test_per_param_ranking_frees_parameters_where_they_are_cheapest_to_lose():
    s, sizes = schedule(**{"cgap.prune.rank": "per_param", "cgap.prune.step_fraction": 0.2})
    widths = {"conv1": 8, "conv2": 64, "conv3": 64}
    equal = {k: torch.ones(w) for k, w in widths.items()}  # equal importance: the costliest units go first
    change = s.plan_pruning(widths, equal)
    after = change.widths(widths)
    assert after["conv1"] == 8 and after["conv2"] < 64  # conv2 units carry 72 + 576 weights, conv1's 9 + 576
    freed = sizes.params(widths) - sizes.params(after)
    chunk = 4 * (8 * 9 + 64 * 9 + 2)  # round_to units of conv2: the budget is met to within one such chunk
    assert abs(freed - 0.2 * sizes.params(widths)) <= chunk


def test_normalized_ranking_counts_units():
    s, sizes = schedule(**{"cgap.prune.step_fraction": 0.2})
    widths = {"conv1": 8, "conv2": 64, "conv3": 64}
    change = s.plan_pruning(widths, {k: torch.ones(w) for k, w in widths.items()})
    removed = sum(widths[k] - w for k, w in change.widths(widths).items())
    assert removed == 28  # ceil(0.2 × 136) = 28 units, rounded down to multiples of 4 per group


def test_reach_grows_every_group_geometrically_to_full_width_on_time():
    s, _ = schedule(
        **{"cgap.grow.reach": 0.3, "cgap.grow.until": 0.3, "cgap.grow.every": 0.5, "cgap.seed_fraction": 0.25}
    )
    widths = dict(s.seeds)
    path = []
    for step in range(1, 31):
        if s.due(step):
            decision = s.decide(step, widths, {k: torch.rand(w) for k, w in widths.items()}, 0.5 + step / 100)
            if decision.change is not None:
                widths = decision.change.widths(widths)
                path.append(widths["conv2"])
    assert widths == s.caps  # full width by 30 % of training
    assert path == sorted(path) and len(set(path)) == len(path)  # it grew at every step, never shrank
    assert path[0] < 64 * 0.25 * 2  # geometric: the first step is small

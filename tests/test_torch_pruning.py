"""The Torch-Pruning adapter against the real Torch-Pruning: same scores and channels on torchvision CNNs of every
kind of channel coupling, statistics once per step, Taylor with BatchNorm, optimizer state."""

import copy
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.convnext import CNBlock, CNBlockConfig
from torchvision.models.regnet import BlockParams

tp = pytest.importorskip("torch_pruning")

from cgap_triton.integrations import torch_pruning as adapter  # noqa: E402
from cgap_triton.integrations.torch_pruning import KernelImportance, prune_step, record_pruning  # noqa: E402
from cgap_triton.models import ModelSpec, build_model  # noqa: E402

VGG_SPEC = ModelSpec("vgg", 10, 3, 32, (16, 16, "M", 32, 32))
IMAGE = 16  # small inputs keep the models cheap on CPU; every layer still sees at least 1×1 pixels


def resnet18() -> nn.Module:
    return torchvision.models.resnet18(weights=None, num_classes=10)


def vgg() -> nn.Module:
    return build_model(VGG_SPEC)


# Reduced torchvision CNNs, one per kind of channel coupling Torch-Pruning handles.
def mobilenet_v2() -> nn.Module:  # depthwise convolutions inside the groups
    return torchvision.models.mobilenet_v2(weights=None, num_classes=10, width_mult=0.25)


def mobilenet_v3() -> nn.Module:  # depthwise + squeeze-excitation
    return torchvision.models.mobilenet_v3_small(weights=None, num_classes=10, width_mult=0.25)


def resnext() -> nn.Module:  # grouped convolutions (ResNeXt-50's blocks, one per stage, narrower)
    resnet = torchvision.models.resnet
    return resnet.ResNet(resnet.Bottleneck, [1, 1, 1, 1], groups=4, width_per_group=8, num_classes=10)


def regnet() -> nn.Module:  # grouped convolutions + squeeze-excitation (a small RegNetY)
    params = BlockParams.from_init_params(depth=4, w_0=16, w_a=8.0, w_m=2.0, group_width=8, se_ratio=0.25)
    return torchvision.models.RegNet(params, num_classes=10)


def densenet() -> nn.Module:  # concatenations
    return torchvision.models.DenseNet(
        growth_rate=8, block_config=(2, 2, 2), num_init_features=16, bn_size=2, num_classes=10
    )


def convnext() -> nn.Module:  # depthwise + LayerNorm + layer-scale parameters
    return torchvision.models.ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=10)


CNNS = [resnet18, vgg, mobilenet_v2, mobilenet_v3, resnext, regnet, densenet, convnext]


def classifier_of(model: nn.Module) -> nn.Module:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def pruner_for(model, importance, *, global_pruning=False, ratio=0.3, steps=1):
    layer_scales = [(m.layer_scale, 0) for m in model.modules() if isinstance(m, CNBlock)]
    return tp.pruner.BasePruner(
        model,
        torch.randn(1, 3, IMAGE, IMAGE),
        importance,
        pruning_ratio=ratio,
        global_pruning=global_pruning,
        iterative_steps=steps,
        ignored_layers=[classifier_of(model)],
        unwrapped_parameters=layer_scales or None,
    )


def backward_on_batch(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, IMAGE, IMAGE, generator=generator)
    y = torch.randint(0, 10, (2,), generator=generator)
    model.train()  # Torch-Pruning's tracing leaves the model in eval mode
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()


def widths(model):
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


@pytest.mark.parametrize("make_model", CNNS, ids=lambda make: make.__name__)
@pytest.mark.parametrize("global_pruning", [False, True], ids=["local", "global"])
def test_l1_prunes_the_channels_torch_pruning_prunes(make_model, global_pruning):
    model = make_model()
    ours, theirs = copy.deepcopy(model), copy.deepcopy(model)
    ours_pruner = pruner_for(ours, KernelImportance("l1"), global_pruning=global_pruning)
    theirs_pruner = pruner_for(theirs, tp.importance.GroupMagnitudeImportance(p=1), global_pruning=global_pruning)
    ours_pruner.step()
    theirs_pruner.step()
    history = ours_pruner.DG.pruning_history()
    assert history, "the step pruned nothing: the comparison would be empty"
    assert history == theirs_pruner.DG.pruning_history()
    assert widths(ours) == widths(theirs) != widths(model)


SETTINGS = [  # (criterion, p, group_reduction, normalizer): every reduction, every normalizer
    *[("l1", 1, reduction, None) for reduction in ("sum", "mean", "max", "prod", "first", "gate")],
    *[("l2", 2, "mean", norm) for norm in ("mean", "sum", "max", "standarization", "gaussian", "lamp", "sentinel_0.5")],
]


@pytest.mark.parametrize("make_model", [mobilenet_v3, regnet, densenet, convnext], ids=lambda make: make.__name__)
def test_group_scores_are_torch_pruning_scores(make_model):
    model = make_model()
    graph = pruner_for(model, KernelImportance()).DG
    groups = list(graph.get_all_groups(ignored_layers=[classifier_of(model)], root_module_types=[nn.Conv2d, nn.Linear]))
    # Depthwise convs sit in the groups of these two: Torch-Pruning does not count them, neither may we.
    depthwise = {tp.prune_depthwise_conv_out_channels, tp.prune_depthwise_conv_in_channels}
    assert any(item.dep.handler in depthwise for group in groups for item in group) == (
        make_model in (mobilenet_v3, convnext)
    )
    for criterion, p, reduction, normalizer in SETTINGS:
        ours = KernelImportance(criterion, reduction, normalizer)
        theirs = tp.importance.GroupMagnitudeImportance(p=p, group_reduction=reduction, normalizer=normalizer)
        for group in groups:
            torch.testing.assert_close(ours(group), theirs(group), rtol=1e-4, atol=1e-5)
        assert ours.launches == 1


def test_the_group_arithmetic_is_torch_pruning_s_own():
    # Only the per-layer scoring is ours; the reduction and the normalizers are inherited, not copied.
    assert issubclass(KernelImportance, tp.importance.GroupMagnitudeImportance)
    assert not {"_reduce", "_normalize", "_lamp"} & set(vars(KernelImportance))


def test_one_launch_per_step_reading_the_live_weights(monkeypatch):
    model = resnet18()
    calls = []

    def spy(weights, grads=None, **kwargs):
        calls.append((list(weights), kwargs["dim"]))
        return real(weights, grads, **kwargs)

    real = adapter.channel_stats
    monkeypatch.setattr(adapter, "channel_stats", spy)
    pruner = pruner_for(model, KernelImportance("l1"))
    live = {id(p) for p in model.parameters()}
    pruner.step()
    assert len(calls) == 1
    weights, dims = calls[0]
    assert all(id(w) in live for w in weights)  # the parameters themselves, no copies
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    # Each conv read twice: its filters (dim 0) and, for the groups it consumes, its columns (dim 1).
    assert sum(1 for w, d in zip(weights, dims) if d == 1 and w.dim() == 4) == len(convs)


def test_statistics_once_per_step_and_anew_at_new_step():
    model = vgg()
    importance = KernelImportance("l1", "sum", None)
    reference = tp.importance.GroupMagnitudeImportance(p=1, group_reduction="sum", normalizer=None)
    pruner = pruner_for(model, importance)
    conv = model.features.conv1.conv
    group = pruner.DG.get_pruning_group(conv, tp.prune_conv_out_channels, list(range(conv.out_channels)))
    for _ in range(2):  # the same root scored again is still the same step: no relaunch
        torch.testing.assert_close(importance(group), reference(group))
    assert importance.launches == 1
    with torch.no_grad():
        conv.weight.mul_(2.0)  # an in-place change the weight's version counter records: recomputed unasked
    torch.testing.assert_close(importance(group), reference(group))
    assert importance.launches == 2
    conv.weight.data.mul_(3.0)  # through .data no version counter sees it: the step has to be started
    importance.new_step()
    torch.testing.assert_close(importance(group), reference(group))
    assert importance.launches == 3


def test_prune_step_starts_the_step():
    model = vgg()
    importance = KernelImportance("l1")
    pruner = pruner_for(model, importance)
    conv = model.features.conv1.conv
    importance(pruner.DG.get_pruning_group(conv, tp.prune_conv_out_channels, list(range(conv.out_channels))))
    generator = torch.Generator().manual_seed(1)
    for p in model.parameters():  # new weights behind the cached statistics' back
        p.data.copy_(torch.randn(p.shape, generator=generator))
    theirs = copy.deepcopy(model)
    theirs_pruner = pruner_for(theirs, tp.importance.GroupMagnitudeImportance(p=1))
    prune_step(pruner)
    theirs_pruner.step()
    assert pruner.DG.pruning_history() == theirs_pruner.DG.pruning_history()


def test_iterative_pruning_matches_torch_pruning_at_every_step():
    model = mobilenet_v2()
    ours, theirs = copy.deepcopy(model), copy.deepcopy(model)
    importance = KernelImportance("l1")
    ours_pruner = pruner_for(ours, importance, ratio=0.5, steps=3)
    theirs_pruner = pruner_for(theirs, tp.importance.GroupMagnitudeImportance(p=1), ratio=0.5, steps=3)
    for step in range(3):
        ours_pruner.step()  # a plain step: pruned (replaced) and updated weights are seen without new_step
        theirs_pruner.step()
        assert ours_pruner.DG.pruning_history() == theirs_pruner.DG.pruning_history(), step
        for net in (ours, theirs):  # the same update on both, in place as an optimizer does
            generator = torch.Generator().manual_seed(step)
            with torch.no_grad():
                for p in net.parameters():
                    p.mul_(1 + 0.5 * torch.randn(p.shape, generator=generator))
    assert importance.launches == 3
    assert widths(ours) == widths(theirs) != widths(model)


def taylor_reference(model: nn.Module) -> dict[str, torch.Tensor]:
    """Per VGG conv, per channel: |w·g| of its filters + |γ·∂γ| of its BN + |w·g| of the consumer's columns."""
    features = [m for m in model.features if hasattr(m, "conv")]
    consumers = [f.conv for f in features[1:]] + [model.classifier]
    scores = {}
    for i, (block, consumer) in enumerate(zip(features, consumers)):
        conv, bn = block.conv, block.bn
        filters = (conv.weight * conv.weight.grad).abs().flatten(1).sum(1)
        norm = (bn.weight * bn.weight.grad).abs()
        columns = (consumer.weight * consumer.weight.grad).abs().transpose(0, 1).flatten(1).sum(1)
        scores[f"conv{i + 1}"] = (filters + norm + columns).detach()
    return scores


def group_scores(importance, pruner, model):
    convs = {f"conv{i + 1}": block.conv for i, block in enumerate(m for m in model.features if hasattr(m, "conv"))}
    return {
        name: importance(pruner.DG.get_pruning_group(conv, tp.prune_conv_out_channels, list(range(conv.out_channels))))
        for name, conv in convs.items()
    }


def test_taylor_one_batch_matches_an_independent_reference():
    model = vgg()
    pruner = pruner_for(model, KernelImportance("taylor"))
    backward_on_batch(model)
    expected = taylor_reference(model)
    summed = group_scores(KernelImportance("taylor", "sum", None), pruner, model)
    averaged = group_scores(KernelImportance("taylor"), pruner, model)  # mean over 3 items, then / mean
    for name, reference in expected.items():
        torch.testing.assert_close(summed[name], reference, rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(averaged[name], reference / reference.mean(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("accumulation", ["sum", "ema"])
def test_taylor_accumulates_batches_in_the_kernel(accumulation):
    model = vgg()
    pruner = pruner_for(model, KernelImportance("taylor"))
    importance = KernelImportance("taylor", "sum", None, accumulation=accumulation, momentum=0.75)
    per_batch = []
    for seed in range(3):
        backward_on_batch(model, seed)
        importance.accumulate(model)
        per_batch.append(taylor_reference(model))
    assert importance.batches == 3 and importance.launches == 3
    scores = group_scores(importance, pruner, model)
    assert importance.launches == 3  # scoring reads the accumulated buffers: no further launch
    for name in scores:
        first, second, third = (batch[name] for batch in per_batch)
        ema = 0.75 * (0.75 * first + 0.25 * second) + 0.25 * third  # the first batch starts the average
        expected = first + second + third if accumulation == "sum" else ema
        torch.testing.assert_close(scores[name], expected, rtol=1e-5, atol=1e-9)


def test_taylor_accumulation_restarts_after_pruning():
    model = vgg()
    importance = KernelImportance("taylor")
    pruner = pruner_for(model, importance)
    backward_on_batch(model)
    importance.accumulate(model)
    prune_step(pruner)
    backward_on_batch(model, seed=1)
    conv = model.features.conv1.conv
    group = pruner.DG.get_pruning_group(conv, tp.prune_conv_out_channels, list(range(conv.out_channels)))
    with pytest.warns(UserWarning, match="pruned"):
        stale = importance(group)  # sums of the unpruned model cannot score the pruned one
    assert stale.shape == (conv.out_channels,)
    importance.accumulate(model)
    assert importance.batches == 1


@pytest.mark.parametrize("make_model", [resnet18, mobilenet_v2], ids=lambda make: make.__name__)
def test_taylor_differs_from_torch_pruning_only_by_batchnorm(make_model):
    model = make_model()
    pruner = pruner_for(model, KernelImportance("taylor"))
    backward_on_batch(model)
    ours = KernelImportance("taylor", "sum", None)
    theirs = tp.importance.GroupTaylorImportance(group_reduction="sum", normalizer=None)
    with_bn = 0
    for group in pruner.DG.get_all_groups(root_module_types=pruner.root_module_types):
        ours_scores = ours(group)
        bn_term = torch.zeros_like(ours_scores)
        for item in group:
            layer = item.dep.target.module
            if isinstance(layer, nn.BatchNorm2d) and None not in item.root_idxs:
                term = (layer.weight * layer.weight.grad).abs()[item.idxs]
                bn_term.scatter_add_(0, torch.as_tensor(item.root_idxs), term.detach())
        with_bn += int(bn_term.abs().sum() > 0)
        torch.testing.assert_close(ours_scores - bn_term, theirs(group), rtol=1e-4, atol=1e-9)
    assert with_bn > 0


def test_taylor_needs_gradients():
    model = vgg()
    pruner = pruner_for(model, KernelImportance("taylor"))
    conv = model.features.conv1.conv
    group = pruner.DG.get_pruning_group(conv, tp.prune_conv_out_channels, list(range(conv.out_channels)))
    with pytest.raises(ValueError, match="backward"):
        KernelImportance("taylor")(group)
    with pytest.raises(ValueError, match="backward"):
        KernelImportance("taylor").accumulate(model)
    with pytest.raises(ValueError, match="criterion"):
        KernelImportance("l3")
    with pytest.raises(ValueError, match="normalizer"):
        KernelImportance("l1", normalizer="median")
    with pytest.raises(ValueError, match="pruner_or_graph"):
        with record_pruning(model):
            pass


@pytest.mark.parametrize(
    "make_model, make_optimizer",
    [
        (resnet18, lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)),
        (vgg, lambda params: torch.optim.Adam(params, lr=1e-3)),
    ],
    ids=["resnet18-sgd", "vgg-adam"],
)
def test_optimizer_state_survives_pruning(make_model, make_optimizer):
    model = make_model()
    optimizer = make_optimizer(model.parameters())
    backward_on_batch(model)
    optimizer.step()
    names = {id(p): name for name, p in model.named_parameters()}
    state_before = {names[id(p)]: {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}
    per_element_keys = [k for k, v in next(iter(optimizer.state.values())).items() if v.dim() > 0]

    pruner = pruner_for(model, KernelImportance("l1"))
    prune_step(pruner, optimizer)

    # Replay the same pruning on copies whose weights are the state before: Torch-Pruning itself then says
    # which entries each kept channel had.
    live = dict(model.named_parameters())
    assert {id(p) for group in optimizer.param_groups for p in group["params"]} == {id(p) for p in live.values()}
    for key in per_element_keys:
        shadow = make_model()
        with torch.no_grad():
            for name, p in shadow.named_parameters():
                p.copy_(state_before[name][key])
        shadow_pruner = pruner_for(shadow, tp.importance.GroupMagnitudeImportance(p=1))
        shadow_pruner.DG.load_pruning_history(pruner.DG.pruning_history())
        for name, expected in shadow.named_parameters():
            assert torch.equal(optimizer.state[live[name]][key], expected.detach()), (name, key)
    pruned = [name for name in live if live[name].shape != state_before[name][per_element_keys[0]].shape]
    assert pruned
    for name in live:
        if "step" in state_before[name]:
            assert torch.equal(optimizer.state[live[name]]["step"], state_before[name]["step"])

    before = {name: p.detach().clone() for name, p in live.items()}
    backward_on_batch(model, seed=7)
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(before[name], p) for name, p in model.named_parameters())


def test_kernel_path_under_the_interpreter():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    )
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 8, 8))
    F.cross_entropy(model(torch.randn(2, 3, 8, 8)), torch.tensor([0, 2])).backward()
    groups = list(graph.get_all_groups(root_module_types=[nn.Conv2d]))
    for criterion in ("l1", "taylor"):
        kernel, twin = KernelImportance(criterion, impl="triton"), KernelImportance(criterion, impl="torch")
        for group in groups:
            torch.testing.assert_close(kernel(group), twin(group), rtol=1e-5, atol=1e-7)
        assert kernel.launches == 1
    kernel, twin = KernelImportance("taylor", impl="triton"), KernelImportance("taylor", impl="torch")
    for importance in (kernel, twin):
        importance.accumulate(model)
        importance.accumulate(model)
    for group in groups:
        torch.testing.assert_close(kernel(group), twin(group), rtol=1e-5, atol=1e-7)


def test_integrations_import_without_torch_pruning():
    code = "import sys, cgap_triton.integrations, cgap_triton.integrations.optim; print('torch_pruning' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"

import pytest
import torch

from cgap_triton.models import VGG_CFGS, ModelSpec, SizeOracle, build_model, count_macs, count_params, seed_widths


def test_vgg19_cifar100_counts():
    model = build_model(ModelSpec("vgg", 100, 3, 32, tuple(VGG_CFGS["vgg19"])))
    assert count_params(model) == 20_081_188
    assert count_macs(model, 3, 32) == 398_182_400  # 398 M


def test_resnet110_cifar10_counts():
    model = build_model(ModelSpec("resnet110", 10))
    assert count_params(model) == 1_727_962  # ≈ 1.73 M
    assert count_macs(model, 3, 32) == 252_887_680  # ≈ 253 M
    assert len(model.groups) == 54


@pytest.mark.parametrize("arch", ["vgg", "resnet20"])
def test_groups_describe_the_tensors(arch):
    spec = ModelSpec(arch, 10, 3, 32, (8, "M", 12, 16) if arch == "vgg" else ())
    widths = {k: max(1, v // 2 + 1) for k, v in spec.full_widths().items()}
    model = build_model(spec, widths)
    assert model.widths == widths
    for g in model.groups:
        for name, dim in g.producers + g.consumers:
            assert model.tensor(name).shape[dim] == widths[g.name], (g.name, name)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)


def test_size_oracle_matches_built_models():
    spec = ModelSpec("vgg", 10, 1, 8, (32, 32, "M", 64))
    oracle = SizeOracle(spec)
    widths = {"conv1": 12, "conv2": 20, "conv3": 36}
    model = build_model(spec, widths)
    assert oracle.params(widths) == count_params(model)
    assert oracle(widths) == (count_params(model), count_macs(model, 1, 8))


def test_seed_widths_round_up_and_respect_floor():
    full = {"a": 64, "b": 10, "c": 4}
    assert seed_widths(full, 0.25, 8) == {"a": 16, "b": 8, "c": 4}
    assert seed_widths(full, 0.3, 4) == {"a": 20, "b": 4, "c": 4}

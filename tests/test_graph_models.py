"""Models the project did not write: channel groups found by tracing, growth that keeps the function, pruning
that keeps every unit as the identity, and a grown-then-pruned model that reloads through ``load_model``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from cgap_triton import load_model
from cgap_triton.cgap import WidthChange
from cgap_triton.cgap.change import GroupChange
from cgap_triton.cgap.surgery import apply_width_change
from cgap_triton.models import ModelSpec, SizeOracle, build_model, count_params
from cgap_triton.models.graph import GraphError, fixed_groups

sys.path.insert(0, str(Path(__file__).parent))  # tests/handmade.py, imported by path as users' modules are

ARCHS = {
    "torchvision:resnet18": 16,
    "torchvision:mobilenet_v2": 16,
    "handmade:concat_net": 8,
}


def spec_of(arch: str, size: int) -> ModelSpec:
    return ModelSpec(arch, 5, 3, size, (), {})


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to float32 rounding, scaled to the outputs (surgery may reorder sums)."""
    return bool(torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(a.abs().max())))


def grown(model, init: str, seed: int = 0) -> WidthChange:
    """Every group gains a third of its width (at least 1): children of random parents, or parentless."""
    generator = torch.Generator().manual_seed(seed)
    groups = {}
    for name, width in model.widths.items():
        count = max(1, width // 3)
        parents = None  # parentless rules
        if init in ("copy_zero_out", "split"):  # distinct parents, as the schedule picks them
            parents = torch.randperm(width, generator=generator)[:count]
        groups[name] = GroupChange.grow(width, parents, count, init=init, noise=0.0, seed=seed)
    return WidthChange("grow", groups)


def randomise_bn(model) -> None:
    """Non-trivial BatchNorm statistics and affine terms, so that copying the wrong channel shows."""
    generator = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=generator) * 0.1)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_groups_cover_the_parameters_and_sizes_follow_the_widths(arch):
    spec = spec_of(arch, ARCHS[arch])
    model = build_model(spec, None, "meta")
    assert model.groups, "every test model has groups that can change"
    full = model.widths
    assert fixed_groups(spec), "the classifier's output is fixed"
    sizes = SizeOracle(spec)
    half = {k: max(1, v // 2) for k, v in full.items()}
    assert sizes.params(full) == count_params(model)
    assert sizes.params(half) == count_params(build_model(spec, half, "meta"))


@pytest.mark.parametrize("init", ["copy_zero_out", "split", "random_zero_out", "orthogonal_zero_out"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_growth_keeps_the_function(arch, init):
    torch.manual_seed(0)
    spec = spec_of(arch, ARCHS[arch])
    model = build_model(spec, None, "cpu").eval()
    randomise_bn(model)
    x = torch.randn(3, 3, spec.image_size, spec.image_size)
    with torch.no_grad():
        before = model(x)
    widths = model.widths
    change = grown(model, init)
    apply_width_change(model, change, impl="torch")
    assert model.widths == change.widths(widths)
    assert count_params(model) == SizeOracle(spec).params(model.widths)
    with torch.no_grad():
        after = model(x)
    assert close(after, before), (after - before).abs().max()


@pytest.mark.parametrize("arch", list(ARCHS))
def test_pruning_that_keeps_every_unit_is_the_identity(arch):
    torch.manual_seed(0)
    spec = spec_of(arch, ARCHS[arch])
    model = build_model(spec, None, "cpu").eval()
    randomise_bn(model)
    x = torch.randn(2, 3, spec.image_size, spec.image_size)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    change = WidthChange("prune", {n: GroupChange.keep(torch.arange(w)) for n, w in model.widths.items()})
    with torch.no_grad():
        before = model(x)
        apply_width_change(model, change, impl="torch")
        after = model(x)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # copies, no arithmetic
    assert torch.equal(after, before)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_grown_then_pruned_model_reloads(arch, tmp_path):
    torch.manual_seed(0)
    spec = spec_of(arch, ARCHS[arch])
    model = build_model(spec, None, "cpu")
    apply_width_change(model, grown(model, "copy_zero_out"), impl="torch")
    generator = torch.Generator().manual_seed(2)
    keep = {}
    for name, width in model.widths.items():
        kept = torch.randperm(width, generator=generator)[: max(1, width // 2)].sort().values
        keep[name] = GroupChange.keep(kept)
    apply_width_change(model, WidthChange("prune", keep), impl="torch")
    model.eval()
    x = torch.randn(2, 3, spec.image_size, spec.image_size)
    with torch.no_grad():
        expected = model(x)
    path = tmp_path / "model.pt"
    torch.save(
        {"spec": spec.to_dict(), "widths": model.widths, "state_dict": model.state_dict(), "mean": [0.0], "std": [1.0]},
        path,
    )
    loaded = load_model(path)
    assert loaded.widths == model.widths
    with torch.no_grad():
        assert close(loaded(x), expected)


def test_grouped_convolutions_and_the_output_are_fixed():
    fixed = fixed_groups(spec_of("torchvision:resnext50_32x4d", 32))
    assert any("grouped convolution" in why for why in fixed.values())
    assert fixed["fc"] == "the model's output"


@pytest.mark.parametrize(
    ("arch", "message"),
    [
        ("torchvision:resnet181", "close names: resnet18"),
        ("no_such_package_xyz:build", "cannot import 'no_such_package_xyz'"),
        ("handmade:missing", "'handmade' has no callable 'missing'"),
        ("handmade:not_a_module", "expected the callable to return an nn.Module"),
        ("torchvision:convnext_tiny", "no channel group can change width"),
    ],
)
def test_models_that_cannot_be_grouped_say_why(arch, message):
    with pytest.raises(GraphError, match=message.replace("(", r"\(")):
        build_model(spec_of(arch, 32), None, "meta")


# ------------------------------------------------------------------------------------------------ the real CLI

RESNET18_FOLDER = [
    "data.image_size=16",
    "data.batch_size=6",
    "data.val_size=6",
    "data.workers=0",
    "train.device=cpu",
    "train.precision=fp32",
    "train.channels_last=false",
    "train.epochs=4",
    "train.log_every=2",
    "optim.warmup_epochs=0",
    "cgap.grow.every=0.5",
    "cgap.grow.rate=0.5",
    "cgap.grow.until=0.45",
    "cgap.stabilize=0.05",
    "cgap.prune.every=0.5",
    "compile.enabled=false",
    "dashboard.enabled=false",
    "checkpoint.every=2",
]


def test_cli_grows_and_prunes_resnet18_on_an_image_folder(tmp_path):
    from cli_runner import ROOT, cli
    from test_imagefolder import make_tree

    tree = make_tree(tmp_path / "images", train=10, val=2)
    out = tmp_path / "run"
    recipe = str(ROOT / "recipes" / "resnet18_imagefolder.toml")
    result = cli("recipe", recipe, f"data.root={tree}", *RESNET18_FOLDER, "--out", str(out), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("summary.json", "metrics.jsonl", "model.pt", "checkpoint.pt", "recipe.toml", "growth.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["growth_steps"] >= 1 and summary["pruning_steps"] >= 1
    assert summary["data"] == "imagefolder"
    assert set(summary["widths"]) == set(summary["widths_full"]) and "layer4.0.conv1" in summary["widths"]
    start = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert start["fixed"] == {"fc": "the model's output"}  # the run says which channels keep their width
    model = load_model(out / "model.pt")
    assert model.widths == summary["widths"]
    assert count_params(model) == summary["params"]
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 3)


def cli_with_tests_on_path(*args, timeout=300):
    """The CLI with tests/ importable, as a user's own package would be."""
    import os
    import subprocess

    from cli_runner import ROOT

    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "TRITON_INTERPRET": "0"}
    return subprocess.run(
        [sys.executable, "-m", "cgap_triton", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )


def test_cli_runs_a_model_by_import_path(tmp_path):
    from cli_runner import ROOT

    recipe = str(ROOT / "recipes" / "shapes_vgg.toml")
    args = ["model.arch=handmade:concat_net", "model.cfg=[]", "model.kwargs={width = 6}", "model.round_to=2"]
    args += ["data.shapes_images=600", "data.val_size=100", "data.test_size=100", "train.epochs=2"]
    args += ["cgap.grow.every=0.25", "cgap.prune.every=0.25", "cgap.stabilize=0.05", "train.log_every=5"]
    out = tmp_path / "run"
    result = cli_with_tests_on_path("recipe", recipe, *args, "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["growth_steps"] >= 1 and summary["pruning_steps"] >= 1
    assert summary["widths_full"]["stem"] == 6  # model.kwargs reached the callable
    sys.modules.pop("handmade", None)
    model = load_model(out / "model.pt")
    assert model.widths == summary["widths"]


def test_cli_refuses_models_it_cannot_build_before_anything_runs(tmp_path):
    from cli_runner import QUICK

    out = tmp_path / "run"
    # digits are 1-channel 8x8 images; the hand-made net takes 3 channels
    result = cli_with_tests_on_path(
        "recipe", QUICK, "model.arch=handmade:concat_net", "model.cfg=[]", "--out", str(out)
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "model.arch: handmade:concat_net" in result.stderr and not out.exists()
    result = cli_with_tests_on_path("recipe", QUICK, "model.arch=torchvision:resnet181", "model.cfg=[]")
    assert result.returncode == 2 and "close names: resnet18" in result.stderr


# ------------------------------------------------------------------------------------------------ against Torch-Pruning


def our_couplings(arch: str) -> set[frozenset]:
    """Per group, the (module, "out"/"in") pairs whose channels it moves (BatchNorm and depthwise convs: "out")."""
    model = build_model(spec_of(arch, 32), None, "meta")
    groups = set()
    for g in model.groups:
        members = [(q, d) for q, d in g.producers + g.consumers] + [(s.tensor, s.dim) for s in g.spans]
        groups.add(
            frozenset((q.removeprefix("net.").rpartition(".")[0], "out" if d == 0 else "in") for q, d in members)
        )
    return groups


def torch_pruning_couplings(arch: str) -> set[frozenset]:
    """The same from Torch-Pruning's DependencyGraph, the classifier's outputs left out as ours are."""
    tp = pytest.importorskip("torch_pruning")
    import torchvision
    from torch import nn

    net = torchvision.models.get_model(arch.split(":")[1], weights=None, num_classes=5).eval()
    names = {m: n for n, m in net.named_modules()}
    graph = tp.DependencyGraph().build_dependency(net, example_inputs=torch.randn(1, 3, 32, 32))
    classifier = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    groups = set()
    for group in graph.get_all_groups(ignored_layers=[classifier], root_module_types=[nn.Conv2d, nn.Linear]):
        members = set()
        for dep, _ in group:
            module = dep.target.module
            if not isinstance(module, nn.Conv2d | nn.Linear | nn.BatchNorm2d):
                continue
            depthwise = isinstance(module, nn.Conv2d) and module.groups > 1
            out = "out" in dep.handler.__name__ or isinstance(module, nn.BatchNorm2d) or depthwise
            members.add((names[module], "out" if out else "in"))
        groups.add(frozenset(members))
    return groups


@pytest.mark.parametrize(
    "arch",
    ["torchvision:resnet18", "torchvision:mobilenet_v2", "torchvision:mobilenet_v3_small", "torchvision:densenet121"],
)
def test_groups_are_torch_prunings_groups(arch):
    """Residual stages, depthwise blocks, squeeze-excitation gates and DenseNet's concatenations: every traced
    group couples exactly the layers Torch-Pruning's dependency graph couples, and there are as many."""
    assert our_couplings(arch) == torch_pruning_couplings(arch)

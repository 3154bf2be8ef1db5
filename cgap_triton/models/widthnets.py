"""CNNs built from width lists, each declaring its channel groups (the widths CGaP grows and prunes).

A model is fully described by its :class:`ModelSpec` and a ``widths`` dict (group name → width), so a
checkpoint that stores both rebuilds it. A :class:`ChannelGroup` lists, by qualified name, the tensors
whose slices along a dim are the group's units: producers (the filters and their BN) and consumers
(the next layer's input columns).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

VGG_CFGS: dict[str, list] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512],
}
RESNET_DEPTHS = {"resnet20": 20, "resnet56": 56, "resnet110": 110}


@dataclass(frozen=True)
class ChannelGroup:
    """One growable width: the slices of ``producers`` and ``consumers`` along their dims are its units."""

    name: str
    producers: tuple[tuple[str, int], ...]  # (qualified param/buffer name, channel dim)
    consumers: tuple[tuple[str, int], ...]
    saliency: str  # the weight whose dim-0 filters score the units (the producing conv)
    ones: tuple[str, ...] = ()  # producers whose new parentless units start at 1 (BatchNorm γ, running variance)
    norm_affine: tuple[str, ...] = ()  # the BatchNorm (γ, β) right after the filters, for the bn_taylor criterion
    # Tensor dims that hold this group's units among other channels (``graph.Span``): a concatenation's consumer,
    # a flatten's Linear, BatchNorm after a concatenation. Empty in the width-list nets.
    spans: tuple = ()


@dataclass(frozen=True)
class ModelSpec:
    """Everything but the widths: architecture, classes, input."""

    arch: str
    num_classes: int
    in_channels: int = 3
    image_size: int = 32
    cfg: tuple = field(default_factory=tuple)  # VGG width list at full width
    kwargs: dict = field(default_factory=dict)  # keyword arguments of a model by name or import path

    def full_widths(self) -> dict[str, int]:
        return build_model(self, None, device="meta").widths

    def to_dict(self) -> dict:
        return {
            "arch": self.arch,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "cfg": list(self.cfg),
            "kwargs": dict(self.kwargs),
        }

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        kwargs = dict(d.get("kwargs", {}))  # files from before models by name have none
        return cls(d["arch"], d["num_classes"], d["in_channels"], d["image_size"], tuple(d["cfg"]), kwargs)


def conv_bn_group(name: str, conv_bn: str, consumer: str) -> ChannelGroup:
    """The group of a ConvBN block's output channels, read by ``consumer`` (a weight, along dim 1)."""
    producers = tuple(
        (f"{conv_bn}.{t}", 0) for t in ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var")
    )
    return ChannelGroup(
        name,
        producers,
        ((consumer, 1),),
        saliency=f"{conv_bn}.conv.weight",
        ones=(f"{conv_bn}.bn.weight", f"{conv_bn}.bn.running_var"),
        norm_affine=(f"{conv_bn}.bn.weight", f"{conv_bn}.bn.bias"),
    )


class GrowableNet(nn.Module):
    """A CNN whose channel groups can change width; ``widths`` always matches the tensors."""

    groups: list[ChannelGroup]

    @property
    def widths(self) -> dict[str, int]:
        return {g.name: self.get_parameter(g.saliency).shape[0] for g in self.groups}

    def tensor(self, name: str) -> torch.Tensor:
        """A parameter or buffer by qualified name."""
        module_name, _, attr = name.rpartition(".")
        module = self.get_submodule(module_name)
        return getattr(module, attr)

    def sync_shapes(self) -> None:
        """After surgery: make the modules' size attributes agree with their tensors again."""
        resizable = self.__dict__.get("_resizable")
        if resizable is None:  # found once: surgery never adds or removes modules
            kinds = (nn.Conv2d, nn.BatchNorm2d, nn.BatchNorm1d, nn.Linear)
            resizable = self.__dict__["_resizable"] = []
            for m in self.modules():
                if not isinstance(m, kinds):
                    continue
                # The tensor that has the module's sizes: its weight; for a BatchNorm without affine parameters,
                # its running mean (none at all: nothing to follow).
                if m._parameters.get("weight") is not None:
                    resizable.append((m, m.__dict__, m._parameters, "weight"))
                elif m._buffers.get("running_mean") is not None:
                    resizable.append((m, m.__dict__, m._buffers, "running_mean"))
        # Size attributes are plain attributes: written to the instance dict, past nn.Module.__setattr__.
        for m, attrs, tensors, key in resizable:
            shape = tensors[key].shape
            if isinstance(m, nn.Conv2d):
                if m.groups > 1 and m.groups == m.out_channels and shape[1] == 1:
                    attrs["groups"] = shape[0]  # depthwise: its in and out channels are one group's
                attrs["out_channels"], attrs["in_channels"] = shape[0], shape[1] * m.groups
            elif isinstance(m, nn.Linear):
                attrs["out_features"], attrs["in_features"] = shape
            else:
                attrs["num_features"] = shape[0]


class ConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__(OrderedDict(conv=nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), bn=nn.BatchNorm2d(c_out)))


class VGG(GrowableNet):
    """CIFAR VGG: 3×3 conv (no bias) + BN + ReLU per width, "M" max-pools, global average pool, one Linear."""

    def __init__(self, cfg: list, num_classes: int, in_channels: int = 3):
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        c_in, n_conv, n_pool = in_channels, 0, 0
        conv_names = []
        for item in cfg:
            if item == "M":
                n_pool += 1
                layers[f"pool{n_pool}"] = nn.MaxPool2d(2)
            else:
                n_conv += 1
                layers[f"conv{n_conv}"] = ConvBN(c_in, item)
                layers[f"relu{n_conv}"] = nn.ReLU(inplace=True)
                conv_names.append(f"conv{n_conv}")
                c_in = item
        self.features = nn.Sequential(layers)
        self.classifier = nn.Linear(c_in, num_classes)
        self.groups = []
        for i, name in enumerate(conv_names):
            base = f"features.{name}"
            consumer = f"features.{conv_names[i + 1]}.conv.weight" if i + 1 < len(conv_names) else "classifier.weight"
            self.groups.append(conv_bn_group(name, base, consumer))
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class BasicBlock(nn.Module):
    """conv1 (inner width, growable) → conv2 (stage width); option-A shortcut (subsample + zero channels)."""

    def __init__(self, c_in: int, inner: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = ConvBN(c_in, inner, stride)
        self.conv2 = ConvBN(inner, c_out)
        self.stride, self.pad = stride, c_out - c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x))
        out = self.conv2(out)
        shortcut = x
        if self.stride != 1 or self.pad:
            shortcut = F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, 0, self.pad))
        return F.relu(out + shortcut)


class ResNetCifar(GrowableNet):
    """CIFAR ResNet-(6n+2): 3 stages of n basic blocks at 16/32/64 channels; only block inner widths change."""

    def __init__(self, depth: int, num_classes: int, in_channels: int = 3, inner: dict[str, int] | None = None):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth: expected 6n+2 (20, 56, 110, ...), got {depth}")
        n = (depth - 2) // 6
        self.stem = ConvBN(in_channels, 16)
        stages, self.groups, c_in = [], [], 16
        for s, width in enumerate((16, 32, 64)):
            blocks = []
            for b in range(n):
                name = f"s{s + 1}b{b + 1}"
                mid = (inner or {}).get(name, width)
                blocks.append(BasicBlock(c_in, mid, width, 2 if (b == 0 and s > 0) else 1))
                base = f"stages.{s}.{b}"
                self.groups.append(conv_bn_group(name, f"{base}.conv1", f"{base}.conv2.conv.weight"))
                c_in = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.classifier = nn.Linear(64, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(F.relu(self.stem(x)))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build_model(
    spec: ModelSpec, widths: dict[str, int] | None = None, device: str | torch.device = "cpu"
) -> GrowableNet:
    """The model of ``spec`` at ``widths`` (None: full width). ``device="meta"`` builds it without memory."""
    if ":" in spec.arch:  # a model by name or import path, its groups found by tracing (``graph``)
        from .graph import build_graph_model

        return build_graph_model(spec, widths, device)
    with torch.device(device):
        if spec.arch in RESNET_DEPTHS:
            return ResNetCifar(RESNET_DEPTHS[spec.arch], spec.num_classes, spec.in_channels, widths)
        cfg = list(spec.cfg) if spec.arch == "vgg" else VGG_CFGS[spec.arch]
        if widths is not None:
            convs = iter(widths[f"conv{i + 1}"] for i in range(sum(1 for c in cfg if c != "M")))
            cfg = [c if c == "M" else next(convs) for c in cfg]
        return VGG(cfg, spec.num_classes, spec.in_channels)


def spec_from_recipe(model_cfg, num_classes: int, in_channels: int, image_size: int) -> ModelSpec:
    """Apply ``width_multiplier`` to the architecture's full widths (rounded to ``round_to``)."""
    arch = model_cfg.arch
    if ":" in arch:
        from .graph import GraphError, fixed_groups

        if model_cfg.width_multiplier != 1:
            raise ValueError(
                f"model.width_multiplier: only for the width-list nets ({arch} is built as named), "
                f"expected 1.0, got {model_cfg.width_multiplier}"
            )
        spec = ModelSpec(arch, num_classes, in_channels, image_size, (), dict(model_cfg.kwargs))
        try:
            fixed_groups(spec)  # traces it now: a model that cannot be grouped fails before anything runs
        except GraphError as err:
            raise ValueError(f"model.arch: {arch}: {err}") from None
        return spec
    cfg: tuple = ()
    if arch in VGG_CFGS or arch == "vgg":
        base = model_cfg.cfg if arch == "vgg" else VGG_CFGS[arch]
        m, r = model_cfg.width_multiplier, model_cfg.round_to
        cfg = tuple(c if c == "M" else max(r, round_up(c * m, r)) if m != 1 else c for c in base)
        pools = cfg.count("M")
        if image_size >> pools < 1:
            key = "model.cfg" if arch == "vgg" else "model.arch"
            raise ValueError(
                f"{key}: {arch} halves the image {pools} times, but {image_size}x{image_size} images allow at most "
                f'{image_size.bit_length() - 1}; expected a width list with fewer "M" (model.arch = "vgg" and '
                "model.cfg), or larger images"
            )
        arch = "vgg"
    return ModelSpec(arch, num_classes, in_channels, image_size, cfg)


def round_up(x: float, multiple: int) -> int:
    return int(math.ceil(x / multiple - 1e-9)) * multiple


def seed_widths(full: dict[str, int], fraction: float, round_to: int) -> dict[str, int]:
    """Seed width of each group: ``fraction`` of full, rounded up to ``round_to``, at least ``round_to``."""
    return {k: min(v, max(round_to, round_up(v * fraction, round_to))) for k, v in full.items()}


def starting_widths(full: dict[str, int], fraction: float, round_to: int, named: dict[str, int]) -> dict[str, int]:
    """A run's first widths: ``named`` (``model.widths``) where given, the seed width elsewhere. Raises ValueError,
    one line per problem, for unknown groups and widths beyond full."""
    unknown = [k for k in named if k not in full]
    problems = [f"model.widths: unknown groups {', '.join(unknown)}; expected names among {', '.join(full)}"]
    problems = (problems if unknown else []) + [
        f"model.widths: {k}: expected at most the group's full width {full[k]}, got {v}"
        for k, v in named.items()
        if k in full and v > full[k]
    ]
    if problems:
        raise ValueError("\n".join(problems))
    return {**seed_widths(full, fraction, round_to), **named}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, in_channels: int, image_size: int) -> int:
    """Multiply-accumulates of one image's forward pass, counted by torch's FlopCounterMode (FLOPs / 2)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, in_channels, image_size, image_size, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


class SizeOracle:
    """Params and MACs of a spec at any widths, counted on models built on the meta device (cached).

    ``params`` is exact and cheap (no model is built), for planners that try many widths: each
    parameter's size is the product of its dims, with the dims that belong to a group set to its width.
    """

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self._cache: dict[tuple, tuple[int, int]] = {}
        full = build_model(spec, None, device="meta")
        # Per parameter, its dims that follow the widths: (dim, [(group or None, columns per unit or fixed)]).
        group_dims: dict[str, dict[int, list]] = {}
        for g in full.groups:
            for name, dim in g.producers + g.consumers:
                group_dims.setdefault(name, {})[dim] = [(g.name, 1)]
            for span in g.spans:
                group_dims.setdefault(span.tensor, {})[span.dim] = [
                    (s.group, s.repeat) if s.group is not None else (None, s.size) for s in span.segments
                ]
        self._shapes = [(list(p.shape), group_dims.get(name, {})) for name, p in full.named_parameters()]

    def __call__(self, widths: dict[str, int]) -> tuple[int, int]:
        key = tuple(sorted(widths.items()))
        if key not in self._cache:
            model = build_model(self.spec, widths, device="meta")
            self._cache[key] = (count_params(model), count_macs(model, self.spec.in_channels, self.spec.image_size))
        return self._cache[key]

    def params(self, widths: dict[str, int]) -> int:
        total = 0
        for shape, dims in self._shapes:
            shape = list(shape)
            for dim, terms in dims.items():
                shape[dim] = sum(n if group is None else widths[group] * n for group, n in terms)
            total += math.prod(shape)
        return total

"""Models whose channel widths can change: today the width-list VGG and CIFAR ResNet (``widthnets``)."""

from .widthnets import (
    RESNET_DEPTHS,
    VGG_CFGS,
    ChannelGroup,
    GrowableNet,
    ModelSpec,
    SizeOracle,
    build_model,
    conv_bn_group,
    count_macs,
    count_params,
    round_up,
    seed_widths,
    spec_from_recipe,
    starting_widths,
)

__all__ = [
    "RESNET_DEPTHS",
    "VGG_CFGS",
    "ChannelGroup",
    "GrowableNet",
    "ModelSpec",
    "SizeOracle",
    "build_model",
    "conv_bn_group",
    "count_macs",
    "count_params",
    "round_up",
    "seed_widths",
    "spec_from_recipe",
    "starting_widths",
]

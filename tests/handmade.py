"""A hand-made CNN for the tests of models by import path: a concatenation (with BatchNorm after it), a
flatten into the classifier, and a residual addition."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConcatNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(width)
        self.a = nn.Conv2d(width, 6, 3, padding=1)
        self.b = nn.Conv2d(width, 4, 1)
        self.cat_bn = nn.BatchNorm2d(6 + 4 + width)
        self.mix = nn.Conv2d(6 + 4 + width, 12, 3, padding=1, bias=False)
        self.mix_bn = nn.BatchNorm2d(12)
        self.res = nn.Conv2d(12, 12, 3, padding=1, bias=False)
        self.res_bn = nn.BatchNorm2d(12)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(12 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem(x)))
        y = torch.cat([F.relu(self.a(x)), F.relu(self.b(x)), x], dim=1)
        y = F.relu(self.mix_bn(self.mix(self.cat_bn(y))))
        y = F.relu(y + self.res_bn(self.res(y)))
        return self.fc(torch.flatten(self.pool(y), 1))


def concat_net(num_classes: int = 10, width: int = 8) -> nn.Module:
    return ConcatNet(num_classes, width=width)


def not_a_module(num_classes: int = 10):
    return [num_classes]

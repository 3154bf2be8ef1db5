"""What every data source produces: uint8 image splits with labels, and the data set they form.

A data set too large to hold (``imagefolder``) has splits of file paths instead, ``FolderSplit``; both kinds
answer ``len``, ``subset``, ``to``, ``in_channels`` and ``image_size``, so the trainer need not tell them apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .imagefolder import FolderSplit


class DataError(Exception):
    """A data set cannot be loaded; the message says which files are missing and how to get them."""


@dataclass
class Split:
    images: torch.Tensor  # [N, C, H, W] uint8
    labels: torch.Tensor  # [N] int64

    def __len__(self) -> int:
        return self.labels.numel()

    def subset(self, idx: torch.Tensor) -> Split:
        return Split(self.images[idx], self.labels[idx])

    def to(self, device: torch.device) -> Split:
        return Split(self.images.to(device), self.labels.to(device))

    @property
    def in_channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]


@dataclass
class Dataset:
    name: str
    train: Split | FolderSplit
    val: Split | FolderSplit
    test: Split | FolderSplit
    num_classes: int
    mean: tuple[float, ...]  # per channel, on the 0–255 scale
    std: tuple[float, ...]
    augment: str
    synthetic: bool = False

    @property
    def in_channels(self) -> int:
        return self.train.in_channels

    @property
    def image_size(self) -> int:
        return self.train.image_size

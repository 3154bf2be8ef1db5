"""Data: whole data sets held as uint8 tensors on the training device, batched and augmented there.

On CUDA the training set lives on the GPU and random crop (zero padding 4) + horizontal flip +
normalisation run as batched tensor ops, so loading never starves a step; on CPU the same code runs
on CPU tensors. Sources: scikit-learn's bundled digits (offline), CIFAR-10/100 and SVHN through
torchvision's classes from a local folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from einops import rearrange

from .recipe import DataConfig


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


@dataclass
class Dataset:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    mean: tuple[float, ...]  # per channel, on the 0–255 scale
    std: tuple[float, ...]
    augment: str
    synthetic: bool = False

    @property
    def in_channels(self) -> int:
        return self.train.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.train.images.shape[-1]


_FILES = {
    "cifar10": (
        "cifar-10-batches-py",
        ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch", "batches.meta"],
    ),
    "cifar100": ("cifar-100-python", ["train", "test", "meta"]),
    "svhn": ("", ["train_32x32.mat", "test_32x32.mat", "extra_32x32.mat"]),
}
_AUTO_AUGMENT = {"digits": "none", "cifar10": "crop_flip", "cifar100": "crop_flip", "svhn": "none", "shapes": "none"}


def load_dataset(cfg: DataConfig) -> Dataset:
    """Load ``cfg.name`` and carve the validation split (and, for digits, the test split) with ``split_seed``."""
    if cfg.name == "digits":
        train, test, classes = _digits(cfg)
    elif cfg.name == "shapes":
        from .shapes import make_shapes

        train, test, classes = make_shapes(cfg)
    else:
        train, test, classes = _torchvision(cfg)
    generator = torch.Generator().manual_seed(cfg.split_seed)
    order = torch.randperm(len(train), generator=generator)
    if cfg.val_size >= len(train):
        raise DataError(
            f"data.val_size: expected fewer than the {len(train)} training images of {cfg.name}, got {cfg.val_size}"
        )
    val, rest = train.subset(order[: cfg.val_size]), train.subset(order[cfg.val_size :])
    if cfg.train_size:
        rest = rest.subset(torch.arange(min(cfg.train_size, len(rest))))
    images = rest.images.float()
    mean = tuple(images.mean(dim=(0, 2, 3)).tolist())
    std = tuple(images.std(dim=(0, 2, 3)).clamp(min=1.0).tolist())
    augment = _AUTO_AUGMENT[cfg.name] if cfg.augment == "auto" else cfg.augment
    return Dataset(cfg.name, rest, val, test, classes, mean, std, augment, synthetic=cfg.name == "shapes")


def _digits(cfg: DataConfig) -> tuple[Split, Split, int]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).mul(255.0 / 16.0).round().to(torch.uint8)
    images = rearrange(images, "n h w -> n 1 h w")
    labels = torch.from_numpy(digits.target).long()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(cfg.split_seed))
    if cfg.test_size >= len(labels):
        raise DataError(f"data.test_size: expected fewer than the {len(labels)} digits images, got {cfg.test_size}")
    test, train = order[: cfg.test_size], order[cfg.test_size :]
    return Split(images[train], labels[train]), Split(images[test], labels[test]), 10


def _torchvision(cfg: DataConfig) -> tuple[Split, Split, int]:
    import torchvision

    root = Path(cfg.root).expanduser()
    folder, files = _FILES[cfg.name]
    missing = [f for f in files if not (root / folder / f).is_file()]
    if cfg.name == "svhn":
        # extra is optional; training uses train+extra when it is present, as in the papers.
        missing = [f for f in missing if f != "extra_32x32.mat"]
    if missing and not cfg.download:
        where = root / folder if folder else root
        raise DataError(
            f"{cfg.name}: missing {', '.join(missing)} under {where}. Put the data set's files there "
            f"(the python version from its official site), or set data.download=true on a machine with "
            f"internet access, or point data.root at the folder that holds them."
        )
    try:
        if cfg.name == "svhn":
            parts = [torchvision.datasets.SVHN(str(root), split=s, download=cfg.download) for s in ("train", "test")]
            if (root / "extra_32x32.mat").is_file() or cfg.download:
                parts.insert(1, torchvision.datasets.SVHN(str(root), split="extra", download=cfg.download))
            as_split = [Split(torch.from_numpy(p.data), torch.from_numpy(p.labels).long()) for p in parts]
            train = Split(torch.cat([s.images for s in as_split[:-1]]), torch.cat([s.labels for s in as_split[:-1]]))
            return train, as_split[-1], 10
        cls = torchvision.datasets.CIFAR10 if cfg.name == "cifar10" else torchvision.datasets.CIFAR100
        parts = [cls(str(root), train=t, download=cfg.download) for t in (True, False)]
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
        raise DataError(
            f"{cfg.name}: the files under {root / folder} failed torchvision's check ({err}); "
            f"replace them with the official files or set data.download=true"
        ) from None
    splits = [
        Split(rearrange(torch.from_numpy(p.data), "n h w c -> n c h w").contiguous(), torch.tensor(p.targets))
        for p in parts
    ]
    return splits[0], splits[1], 100 if cfg.name == "cifar100" else 10


class Batches:
    """Batches of one split, on the split's device, augmented and normalised as batched tensor ops.

    Every random draw is a pure function of (seed, epoch, batch): the order of an epoch comes from a
    generator seeded with (seed, epoch) and each batch's augmentation from one seeded with (seed, epoch,
    batch), so a run resumed mid-epoch sees exactly the batches it would have seen.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        *,
        augment: str = "none",
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
    ):
        self.split, self.batch_size, self.augment = split, batch_size, augment
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        device = split.images.device
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.inv_std = 1.0 / torch.tensor(std, device=device).view(1, -1, 1, 1)

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch(0)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of ``epoch``, from batch ``start`` on."""
        n, device = len(self.split), self.split.images.device
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
        else:
            order = torch.arange(n)
        for b in range(start, len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size].to(device)
            images = self.split.images[idx]
            if self.augment != "none":
                generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 100_003 + b)
                images = self._augment(images, generator)
            yield (images.float() - self.mean) * self.inv_std, self.split.labels[idx]

    def _augment(self, images: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
        n, _, h, w = images.shape
        device = images.device
        offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator).to(device)
        padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
        rows = (offsets[:, :1] + torch.arange(h, device=device)).view(n, h, 1)
        cols = (offsets[:, 1:] + torch.arange(w, device=device)).view(n, 1, w)
        batch = torch.arange(n, device=device).view(n, 1, 1)
        cropped = rearrange(padded.permute(0, 2, 3, 1)[batch, rows, cols], "n h w c -> n c h w")
        if self.augment == "crop_flip":
            flip = (torch.rand(n, generator=generator) < 0.5).to(device).view(n, 1, 1, 1)
            cropped = torch.where(flip, cropped.flip(3), cropped)
        return cropped.contiguous()

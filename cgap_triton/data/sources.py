"""Data sources: scikit-learn's bundled digits (offline), CIFAR-10/100 and SVHN through torchvision's classes
from a local folder, and the synthetic "shapes" (``shapes.py``); each becomes uint8 splits with a validation
split carved with ``data.split_seed``. A folder of image files (``imagefolder.py``) becomes splits of paths,
carved the same way."""

from __future__ import annotations

from pathlib import Path

import torch
from einops import rearrange

from ..recipe import DataConfig
from .imagefolder import load_folders, sample_images
from .shapes import make_shapes
from .splits import DataError, Dataset, Split

# Per data set: the folder under data.root torchvision reads, the files it needs there, and where they come from.
_FILES = {
    "cifar10": (
        "cifar-10-batches-py",
        ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch", "batches.meta"],
    ),
    "cifar100": ("cifar-100-python", ["train", "test", "meta"]),
    # The papers train SVHN on train + extra, so extra is required, not optional.
    "svhn": ("", ["train_32x32.mat", "extra_32x32.mat", "test_32x32.mat"]),
}
_AUTO_AUGMENT = {
    "digits": "none",
    "cifar10": "crop_flip",
    "cifar100": "crop_flip",
    "svhn": "none",
    "shapes": "none",
    "imagefolder": "rrc_flip",
}


def load_dataset(cfg: DataConfig) -> Dataset:
    """Load ``cfg.name`` and carve the validation split (and, for digits, the test split) with ``split_seed``."""
    if cfg.name == "digits":
        train, test, classes = _digits(cfg)
    elif cfg.name == "shapes":
        train, test, classes = make_shapes(cfg)
    elif cfg.name == "imagefolder":
        train, test, classes = load_folders(cfg)
    else:
        train, test, classes = _torchvision(cfg)
    if cfg.val_size >= len(train):
        raise DataError(
            f"data.val_size: expected fewer than the {len(train)} training images of {cfg.name}, got {cfg.val_size}"
        )
    generator = torch.Generator().manual_seed(cfg.split_seed)
    order = torch.randperm(len(train), generator=generator)
    val, rest = train.subset(order[: cfg.val_size]), train.subset(order[cfg.val_size :])
    if cfg.train_size:
        rest = rest.subset(torch.arange(min(cfg.train_size, len(rest))))
    # Images from files: measured on a fixed sample of the training images (decoding all would take an epoch).
    mean, std = channel_mean_std(rest.images if isinstance(rest, Split) else sample_images(rest, seed=cfg.split_seed))
    augment = _AUTO_AUGMENT[cfg.name] if cfg.augment == "auto" else cfg.augment
    return Dataset(cfg.name, rest, val, test, classes, mean, std, augment, synthetic=cfg.name == "shapes")


def channel_mean_std(images: torch.Tensor, chunk: int = 8192) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (unbiased) std of uint8 ``[N, C, H, W]`` images, on the 0–255 scale.

    Chunked with float64 sums: SVHN's train + extra (600 k images) as one float32 tensor would take 7 GB.
    """
    n, c = images.shape[0], images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    squares = torch.zeros(c, dtype=torch.float64)
    for part in images.split(chunk):
        x = part.float()  # exact: 255² fits float32's mantissa, and the sums run in float64
        total += x.sum(dim=(0, 2, 3), dtype=torch.float64).cpu()
        squares += (x * x).sum(dim=(0, 2, 3), dtype=torch.float64).cpu()
    count = n * images.shape[2] * images.shape[3]
    mean = total / count
    var = (squares - count * mean * mean) / max(1, count - 1)
    # A constant channel (std 0) would divide by zero; 1.0 on the 0–255 scale is far below any real spread.
    std = var.clamp(min=0).sqrt().clamp(min=1.0)
    return tuple(mean.tolist()), tuple(std.tolist())


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


def _how_to_get(name: str, where: Path) -> str:
    """Where the official files come from: the URLs torchvision itself downloads."""
    import torchvision

    if name == "svhn":
        urls = " ".join(url for url, _, _ in torchvision.datasets.SVHN.split_list.values())
        return f"download {urls} (the 32x32 .mat files, format 2) into {where}"
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    return f"download {cls.url} (the python version) and extract it in {where}"


def _torchvision(cfg: DataConfig) -> tuple[Split, Split, int]:
    import torchvision

    root = Path(cfg.root).expanduser()
    folder, files = _FILES[cfg.name]
    where = root / folder if folder else root
    missing = [f for f in files if not (where / f).is_file()]
    if missing and not cfg.download:
        raise DataError(
            f"{cfg.name}: missing {', '.join(missing)} under {where}. To get them: {_how_to_get(cfg.name, root)}; "
            f"or set data.download=true on a machine with internet access; "
            f"or point data.root at the folder that already holds them."
        )
    try:
        if cfg.name == "svhn":
            # train + extra for training, as in the papers; torchvision maps label 10 to digit 0.
            parts = [
                torchvision.datasets.SVHN(str(root), split=s, download=cfg.download) for s in ("train", "extra", "test")
            ]
            splits = [Split(torch.from_numpy(p.data).contiguous(), torch.from_numpy(p.labels).long()) for p in parts]
            train = Split(torch.cat([s.images for s in splits[:2]]), torch.cat([s.labels for s in splits[:2]]))
            return train, splits[2], 10
        cls = torchvision.datasets.CIFAR10 if cfg.name == "cifar10" else torchvision.datasets.CIFAR100
        parts = [cls(str(root), train=t, download=cfg.download) for t in (True, False)]
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted" (an md5 mismatch)
        raise DataError(
            f"{cfg.name}: the files under {where} failed torchvision's checksum test ({err}); "
            f"replace them with the official files ({_how_to_get(cfg.name, root)}) or set data.download=true"
        ) from None
    except OSError as err:  # a download without network, a full disk, a file that cannot be read
        raise DataError(
            f"{cfg.name}: could not {'download or ' * cfg.download}read the files under {where} ({err}); "
            f"{_how_to_get(cfg.name, root)}"
        ) from None
    splits = [
        Split(rearrange(torch.from_numpy(p.data), "n h w c -> n c h w").contiguous(), torch.tensor(p.targets))
        for p in parts
    ]
    return splits[0], splits[1], 100 if cfg.name == "cifar100" else 10

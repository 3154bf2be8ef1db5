"""``data.name = "imagefolder"``: images streamed from files, for data sets that do not fit in memory.

``data.root`` holds ``train/`` and ``val/`` in the layout of torchvision's ``ImageFolder`` (one subfolder
per class, its images anywhere below it). ``val/`` is the run's *test* split; the validation split that
growth and pruning decide on is carved from ``train/`` as for every other data set. A split is a list of
file paths and labels (``FolderSplit``); ``FolderBatches`` decodes, augments and batches them in
``DataLoader`` workers and normalises on the training device, as ``Batches`` does for the sets held whole.

Augmentation follows the usual ImageNet recipe: training takes a random resized crop (scale 0.08–1,
aspect 3/4–4/3) and a horizontal flip; evaluation resizes the shorter side to ``image_size / 0.875`` and
takes the centre crop. Every draw is a pure function of (seed, epoch, image), so that the batches do not
depend on the number of workers, on which process decoded an image, or on where a resumed run started.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from .epochs import EpochBatches, epoch_generator, epoch_order
from .splits import DataError

if TYPE_CHECKING:
    from ..recipe import DataConfig

DEFAULT_IMAGE_SIZE = 224
CROP_FRACTION = 0.875  # evaluation: the centre crop is this fraction of the resized shorter side
RRC_SCALE = (0.08, 1.0)  # random resized crop: fraction of the image's area ...
RRC_RATIO = (3 / 4, 4 / 3)  # ... and aspect ratio (width / height), as torchvision's RandomResizedCrop
MEAN_STD_IMAGES = 256  # training images the normalisation statistics are measured on
MAX_AUTO_WORKERS = 8
# ImageFolder's: a file with any other ending is not an image of the data set and is skipped.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# What PIL raises for a file that is missing, unreadable, not an image, truncated or corrupt (its PNG
# reader raises SyntaxError for broken chunks), or has more pixels than PIL will decode.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


@dataclasses.dataclass(frozen=True, eq=False)
class FolderSplit:
    """Images as file paths with labels; ``to(device)`` records where batches go, it moves nothing.

    The paths are one fixed-width numpy bytes array, not a list of str: forked ``DataLoader`` workers
    share the parent's memory copy-on-write, and a Python object per file (touched by reference counting
    on every access) would copy the whole list into every worker, gigabytes for ImageNet-sized sets.
    """

    files: np.ndarray  # [N] bytes: os.fsencode of each path
    labels: torch.Tensor  # [N] int64, on the CPU
    image_size: int  # side of the square images a batch holds
    workers: int  # DataLoader worker processes (0: decode in the calling process)
    device: torch.device = torch.device("cpu")
    in_channels = 3  # every image is converted to RGB

    def __len__(self) -> int:
        return self.labels.numel()

    def path(self, i: int) -> str:
        return os.fsdecode(self.files[i])

    def subset(self, idx: torch.Tensor) -> FolderSplit:
        idx = torch.as_tensor(idx, dtype=torch.int64).cpu()
        return dataclasses.replace(self, files=self.files[idx.numpy()], labels=self.labels[idx])

    def to(self, device: torch.device | str) -> FolderSplit:
        return dataclasses.replace(self, device=torch.device(device))


# ------------------------------------------------------------------------------------------------ loading


def load_folders(cfg: DataConfig) -> tuple[FolderSplit, FolderSplit, int]:
    """(the images of train/, those of val/, number of classes); every problem of the layout is a DataError.

    Besides the layout, the first image of every class (of both folders) is decoded, so that a folder of
    files that are not images fails here, before a run folder exists, rather than at its first batch.
    """
    root = Path(cfg.root).expanduser().absolute()
    layout = "train/ and val/, each with one subfolder of images per class (torchvision's ImageFolder layout)"
    if not root.is_dir():
        raise DataError(f"imagefolder: data.root {root} is not a folder; expected a folder holding {layout}")
    missing = [name for name in ("train", "val") if not (root / name).is_dir()]
    if missing:
        raise DataError(f"imagefolder: no {' or '.join(m + '/' for m in missing)} in {root}; expected {layout}")
    train_dir, val_dir = root / "train", root / "val"
    classes = _classes(train_dir)
    val_classes = _classes(val_dir)
    if val_classes != classes:
        only_train = sorted(set(classes) - set(val_classes))
        only_val = sorted(set(val_classes) - set(classes))
        differences = ([f"missing from val/: {', '.join(only_train)}"] if only_train else []) + (
            [f"not in train/: {', '.join(only_val)}"] if only_val else []
        )
        raise DataError(
            f"imagefolder: the class folders of {val_dir} differ from those of {train_dir} "
            f"({'; '.join(differences)}); expected the same classes in both, since val/ is scored with the "
            "labels learnt from train/"
        )
    size, workers = cfg.image_size or DEFAULT_IMAGE_SIZE, resolve_workers(cfg.workers)
    train, test = (_scan(folder, classes, size, workers) for folder in (train_dir, val_dir))
    return train, test, len(classes)


def resolve_workers(workers: int) -> int:
    """``data.workers``, with -1 (auto) made a number: one worker per CPU this rank may use, one CPU left
    to the training process, at most MAX_AUTO_WORKERS (beyond that, workers mostly compete for the disk)."""
    if workers >= 0:
        return workers
    try:
        cpus = len(os.sched_getaffinity(0))  # the CPUs this process may run on (a container's or taskset's)
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    ranks_here = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))  # torchrun: the ranks on this machine
    return max(0, min(MAX_AUTO_WORKERS, cpus // ranks_here - 1))


def _classes(folder: Path) -> list[str]:
    """The class names of a folder: its subfolders' names, sorted (as ImageFolder; index = position)."""
    classes = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    if not classes:
        raise DataError(
            f"imagefolder: {folder} has no class subfolders; expected one subfolder per class holding that "
            f"class's images (e.g. {folder / 'cat' / '0001.jpg'})"
        )
    return classes


def _scan(folder: Path, classes: list[str], image_size: int, workers: int) -> FolderSplit:
    """Every image file below each class folder, in ImageFolder's order (class, then sorted walk)."""
    files: list[bytes] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = [
            os.path.join(where, f)
            for where, _, names in sorted(os.walk(folder / name, followlinks=True))
            for f in sorted(names)
            if f.lower().endswith(IMAGE_EXTENSIONS)
        ]
        if not found:
            raise DataError(
                f"imagefolder: class folder {folder / name} holds no images; expected at least one file ending in "
                f"{', '.join(IMAGE_EXTENSIONS)}"
            )
        _check_decodes(found[0])
        files += (os.fsencode(f) for f in found)
        labels += [label] * len(found)
    return FolderSplit(np.array(files, dtype=np.bytes_), torch.tensor(labels, dtype=torch.int64), image_size, workers)


def _check_decodes(path: str) -> None:
    try:
        with open(path, "rb") as f, Image.open(f) as image:
            image.draft("RGB", (64, 64))  # JPEG: decoded at a reduced scale, but the whole stream is read
            image.convert("RGB")
    except _DECODE_ERRORS as err:
        raise DataError(_unreadable(path, err)) from None


def _unreadable(path: str, err: BaseException) -> str:
    return (
        f"imagefolder: {path}: cannot be read as an image ({type(err).__name__}: {err}); "
        "expected an image file that decodes; replace or delete it"
    )


def load_rgb(path: str) -> Image.Image:
    """The image at ``path`` as RGB (grey, palette, CMYK and alpha converted, as ImageFolder's loader does);
    DataError naming the file when it cannot be decoded."""
    try:
        with open(path, "rb") as f, Image.open(f) as image:
            return image.convert("RGB")
    except _DECODE_ERRORS as err:
        raise DataError(_unreadable(path, err)) from None


def eval_view(image: Image.Image, size: int) -> torch.Tensor:
    """Evaluation transform: shorter side resized to round(size / 0.875), then the centre size × size;
    uint8 [3, size, size]."""
    import torchvision.transforms.functional as F

    image = F.center_crop(F.resize(image, [round(size / CROP_FRACTION)]), [size, size])
    return F.pil_to_tensor(image)


def train_view(image: Image.Image, size: int, rng: random.Random) -> torch.Tensor:
    """Training transform: a random resized crop to size × size, flipped with probability 1/2; uint8."""
    import torchvision.transforms.functional as F

    top, left, height, width = crop_box(image.width, image.height, rng)
    image = F.resized_crop(image, top, left, height, width, [size, size])
    if rng.random() < 0.5:
        image = F.hflip(image)
    return F.pil_to_tensor(image)


def crop_box(width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random resized crop: torchvision's RandomResizedCrop.get_params
    (ten tries at a random area and aspect, else the centre crop at the nearest allowed aspect), with the
    draws taken from ``rng`` instead of torch's global generator."""
    area = width * height
    log_lo, log_hi = math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])
    for _ in range(10):
        target = area * rng.uniform(*RRC_SCALE)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    ratio = width / height
    if ratio < RRC_RATIO[0]:
        w, h = width, round(width / RRC_RATIO[0])
    elif ratio > RRC_RATIO[1]:
        w, h = round(height * RRC_RATIO[1]), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def sample_images(split: FolderSplit, count: int = MEAN_STD_IMAGES, seed: int = 0) -> torch.Tensor:
    """Up to ``count`` images of ``split`` at the evaluation transform, uint8 [n, 3, S, S]: the sample the
    normalisation statistics are measured on. Which images is a pure function of ``seed`` (data.split_seed),
    so every run on the same data normalises alike; decoded here, in the calling process."""
    pick = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:count].sort().values
    return torch.stack([eval_view(load_rgb(split.path(i)), split.image_size) for i in pick.tolist()])


# ------------------------------------------------------------------------------------------------ batches


class _Decoder(TorchDataset):
    """What a worker runs: key (epoch, index) → (uint8 image, label, problem).

    A file that cannot be decoded is not raised in the worker (the DataLoader would re-raise it with the
    worker's traceback pasted into the message): it comes back as a problem string, and the training
    process raises it as a DataError naming the file.
    """

    def __init__(self, split: FolderSplit, augment: str, seed: int, image_size: int):
        self.split, self.augment, self.seed, self.size = split, augment, seed, image_size
        self.labels = split.labels.numpy()

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int, str]:
        epoch, i = key
        path = self.split.path(i)
        try:
            image = load_rgb(path)
        except DataError as err:
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), -1, str(err)
        if self.augment == "rrc_flip":
            # A str seed goes through SHA-512: neighbouring keys give unrelated streams, and the hash
            # randomisation of str (PYTHONHASHSEED) plays no part.
            return train_view(image, self.size, random.Random(f"{self.seed}/{epoch}/{i}")), int(self.labels[i]), ""
        return eval_view(image, self.size), int(self.labels[i]), ""


def _collate(samples: list[tuple[torch.Tensor, int, str]]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    images, labels, problems = zip(*samples)
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64), [p for p in problems if p]


class _BatchKeys:
    """The DataLoader's batch sampler: the keys (epoch, index) of batches ``batches`` of one epoch, this
    rank's share of each. A resumed epoch starts at its batch here: nothing before it is decoded."""

    def __init__(self, order: torch.Tensor, epoch: int, batches: range, window: Callable[[int], slice]):
        self.order, self.epoch, self.batches, self.window = order, epoch, batches, window

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for b in self.batches:
            yield [(self.epoch, i) for i in self.order[self.window(b)].tolist()]


class FolderBatches(EpochBatches):
    """Batches of a FolderSplit on the split's device: the interface of ``Batches``, streamed from files.

    Images are decoded and augmented in ``workers`` DataLoader processes (0: in this one) into uint8
    batches, which travel pinned (on CUDA) and asynchronously to the device, where they are normalised:
    uint8 is a quarter of the float bytes on the way. An epoch's order comes from a generator seeded with
    (seed, epoch), as in ``Batches``; the crop and flip of image i in epoch e from a generator seeded with
    (seed, e, i). So a run resumed at batch b of an epoch sees exactly the batches it would have seen, and
    rank r of ``world`` takes every world-th image of each global batch, as ``Batches`` does.

    A new DataLoader (and its workers) per ``epoch`` call: nothing is shared between epochs or between
    two loaders, so evaluation may run in the middle of a training epoch.
    """

    def __init__(
        self,
        split: FolderSplit,
        batch_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        *,
        augment: str = "none",
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        channels_last: bool = False,
        shard: tuple[int, int] = (0, 1),
        image_size: int | None = None,
        workers: int | None = None,
    ):
        if augment not in ("none", "rrc_flip"):
            raise ValueError(f"augment: expected 'none' or 'rrc_flip' for images from files, got {augment!r}")
        super().__init__(
            len(split),
            batch_size,
            mean,
            std,
            split.device,
            shuffle=shuffle,
            drop_last=drop_last,
            seed=seed,
            channels_last=channels_last,
            shard=shard,
        )
        self.split, self.augment = split, augment
        # None: the split's own, as data.image_size and data.workers set them when it was loaded.
        self.image_size = split.image_size if image_size is None else image_size
        self.workers = split.workers if workers is None else workers

    def order(self, epoch: int) -> torch.Tensor:
        """The epoch's order of the split's images (the order ``Batches`` draws for the same seed and epoch)."""
        return epoch_order(self.n, self.shuffle, epoch_generator(self.seed, epoch))

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of ``epoch``, from batch ``start`` on: (normalised float images, int64 labels)."""
        keys = _BatchKeys(self.order(epoch), epoch, range(start, len(self)), self.window)
        loader = DataLoader(
            _Decoder(self.split, self.augment, self.seed, self.image_size),
            batch_sampler=keys,
            num_workers=self.workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
        )
        for images, labels, problems in loader:
            if problems:
                more = f" (and {len(problems) - 1} more files of this batch)" if len(problems) > 1 else ""
                raise DataError(problems[0] + more)
            images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
            yield self.normalise(images), labels.to(self.device, non_blocking=True)

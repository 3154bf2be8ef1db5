"""Data: whole data sets held as uint8 tensors on the training device, batched and augmented there.

On CUDA the training set lives on the GPU and random crop (zero padding 4) + horizontal flip +
normalisation run as batched tensor ops, so loading never starves a step; on CPU the same code runs
on CPU tensors. ``sources`` loads digits, CIFAR-10/100, SVHN and the synthetic ``shapes``; ``batches``
draws the batches; ``splits`` holds the types both share.

A data set too large for that, a folder of image files (``imagefolder``), is streamed instead: its splits
are file paths, decoded and augmented in DataLoader workers (``FolderSplit``, ``FolderBatches``).
``make_batches`` picks the right kind of batches for a split.
"""

from .batches import Batches, make_batches
from .imagefolder import FolderBatches, FolderSplit
from .sources import channel_mean_std, load_dataset
from .splits import DataError, Dataset, Split

__all__ = [
    "Batches",
    "DataError",
    "Dataset",
    "FolderBatches",
    "FolderSplit",
    "Split",
    "channel_mean_std",
    "load_dataset",
    "make_batches",
]

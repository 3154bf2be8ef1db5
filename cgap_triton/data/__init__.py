"""Data: whole data sets held as uint8 tensors on the training device, batched and augmented there.

On CUDA the training set lives on the GPU and random crop (zero padding 4) + horizontal flip +
normalisation run as batched tensor ops, so loading never starves a step; on CPU the same code runs
on CPU tensors. ``sources`` loads digits, CIFAR-10/100, SVHN and the synthetic ``shapes``; ``batches``
draws the batches; ``splits`` holds the types both share.
"""

from .batches import Batches
from .sources import channel_mean_std, load_dataset
from .splits import DataError, Dataset, Split

__all__ = ["Batches", "DataError", "Dataset", "Split", "channel_mean_std", "load_dataset"]

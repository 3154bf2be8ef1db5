"""What every batch source shares: an epoch's random stream, the batch count, a rank's share of a global
batch and the normalisation. ``Batches`` (a split in memory) and ``FolderBatches`` (images from files) both
build on :class:`EpochBatches`, so that the same (seed, epoch) gives the same order in either."""

from __future__ import annotations

from collections.abc import Iterator

import torch


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator of an epoch's draws (order first, then any augmentation drawn with it)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def epoch_order(n: int, shuffle: bool, generator: torch.Generator) -> torch.Tensor:
    """The epoch's order of ``n`` images: a permutation drawn from ``generator``, or 0..n-1."""
    return torch.randperm(n, generator=generator) if shuffle else torch.arange(n)


class EpochBatches:
    """The common part of a batch source: ``len()`` batches of ``batch_size`` (the last partial one unless
    ``drop_last``), rank ``shard[0]`` of ``shard[1]`` taking every world-th image of each global batch, and
    ``normalise`` mapping uint8 images on ``device`` to normalised floats."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        device: torch.device,
        *,
        shuffle: bool,
        drop_last: bool,
        seed: int,
        channels_last: bool,
        shard: tuple[int, int],
    ):
        self.n, self.batch_size, self.device = n, batch_size, device
        self.shuffle, self.drop_last, self.seed, self.shard = shuffle, drop_last, seed, shard
        # (rank, world size): this process takes every world-th image of each global batch, so that the
        # ranks together see exactly the batches one process would, and each gathers only its own.
        self.rank, self.world = shard
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1).to(device)
        self.inv_std = (1.0 / torch.tensor(std, dtype=torch.float32)).view(1, -1, 1, 1).to(device)

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch(0)  # a subclass's epoch(epoch, start=0): the batches of that epoch

    def window(self, b: int) -> slice:
        """This rank's positions of global batch ``b`` in the epoch's order."""
        return slice(b * self.batch_size + self.rank, (b + 1) * self.batch_size, self.world)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (on ``device``) to floats, normalised per channel."""
        return (images.float() - self.mean) * self.inv_std

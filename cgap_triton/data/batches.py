"""Batches of a split on its own device: shuffled, sharded over ranks, augmented and normalised there."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from einops import rearrange

from .epochs import EpochBatches, epoch_generator, epoch_order
from .imagefolder import FolderBatches, FolderSplit
from .splits import Split


class Batches(EpochBatches):
    """Batches of one split, on the split's device, augmented and normalised as batched tensor ops.

    Every random draw is a pure function of (seed, epoch, batch): an epoch's order, crop offsets and
    flips come from a generator seeded with (seed, epoch), and batch b takes positions
    [b·batch_size, (b+1)·batch_size) of them, so a run resumed mid-epoch sees exactly the batches it
    would have seen. The draws are made on the CPU (identical on every device) and moved to the device
    once per epoch: inside the epoch nothing waits on the host, so the next step's kernels queue up
    behind the current one.
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
        pad: int = 4,
        channels_last: bool = False,
        shard: tuple[int, int] = (0, 1),
    ):
        if augment not in ("none", "crop", "crop_flip"):
            raise ValueError(f"augment: expected 'none', 'crop' or 'crop_flip', got {augment!r}")
        super().__init__(
            len(split),
            batch_size,
            mean,
            std,
            split.images.device,
            shuffle=shuffle,
            drop_last=drop_last,
            seed=seed,
            channels_last=channels_last,
            shard=shard,
        )
        self.split, self.augment, self.pad = split, augment, pad

    def draws(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The epoch's (order, crop offsets [N, 2] in 0..2·pad, flips [N] bool), on the CPU."""
        n = self.n
        generator = epoch_generator(self.seed, epoch)
        order = epoch_order(n, self.shuffle, generator)
        offsets = flips = None
        if self.augment != "none":
            offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=generator, dtype=torch.int32)
        if self.augment == "crop_flip":
            flips = torch.rand(n, generator=generator) < 0.5
        return order, offsets, flips

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of ``epoch``, from batch ``start`` on: (normalised float images, int64 labels)."""
        order, offsets, flips = (t if t is None else t.to(self.device) for t in self.draws(epoch))
        for b in range(start, len(self)):
            window = self.window(b)
            idx = order[window]
            images = self.split.images[idx]
            if offsets is not None:
                images = self._crop(images, offsets[window])
            if flips is not None:
                images = torch.where(flips[window].view(-1, 1, 1, 1), images.flip(3), images)
            # Layout change on uint8 (a quarter of the float bytes); the float ops below keep it.
            images = images.contiguous(memory_format=self.memory_format)
            yield self.normalise(images), self.split.labels[idx]

    def _crop(self, images: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Random crop with zero padding: output pixel (i, j) is padded pixel (i + dy, j + dx)."""
        n, _, h, w = images.shape
        pad, device = self.pad, images.device
        padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
        rows = (offsets[:, :1] + torch.arange(h, device=device)).view(n, h, 1)
        cols = (offsets[:, 1:] + torch.arange(w, device=device)).view(n, 1, w)
        batch = torch.arange(n, device=device).view(n, 1, 1)
        # One gather over (image, row, col) moves all channels at once; the result is NHWC in memory.
        return rearrange(padded.permute(0, 2, 3, 1)[batch, rows, cols], "n h w c -> n c h w")


def make_batches(
    split: Split | FolderSplit, batch_size: int, mean: tuple[float, ...], std: tuple[float, ...], **kwargs
) -> Batches | FolderBatches:
    """The batches of ``split``, whichever kind it is: ``Batches`` for a split held whole as tensors,
    ``FolderBatches`` for one streamed from files. Keywords both take (augment, shuffle, drop_last, seed,
    channels_last, shard) mean the same in both; the trainer builds every batch through here, so it need
    not know which kind of data set it trains on."""
    if isinstance(split, FolderSplit):
        return FolderBatches(split, batch_size, mean, std, **kwargs)
    return Batches(split, batch_size, mean, std, **kwargs)

"""WidthChange: one structural change, as an index map per channel group, with every decision surgery needs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class GroupChange:
    """New slot j of the group takes old unit ``index[j]`` (-1: a new unit with no parent).

    ``new[j]`` marks units added by this change (a child copies its parent but is still new: its
    outgoing weights and optimizer state start at zero). For new units, ``init`` names the rule surgery
    applies (``copy_zero_out``, ``split``, ``random_zero_out``; see ``surgery.INITS``), ``noise`` the
    relative noise on copied filters and ``seed`` the noise's seed: the schedule decides them, surgery only
    carries them out.
    """

    index: torch.Tensor  # [new_width] int64, CPU
    new: torch.Tensor  # [new_width] bool, CPU
    init: str = "copy_zero_out"
    noise: float = 0.0
    seed: int = 0

    @property
    def width(self) -> int:
        return self.index.numel()

    @classmethod
    def keep(cls, kept: torch.Tensor) -> GroupChange:
        return cls(kept.long(), torch.zeros(kept.numel(), dtype=torch.bool))

    @classmethod
    def grow(
        cls,
        width: int,
        parents: torch.Tensor | None,
        count: int,
        *,
        init: str = "copy_zero_out",
        noise: float = 0.0,
        seed: int = 0,
    ) -> GroupChange:
        """Append ``count`` units: children of ``parents``, or parentless units when ``parents`` is None."""
        extra = parents.long() if parents is not None else torch.full((count,), -1, dtype=torch.long)
        index = torch.cat([torch.arange(width), extra])
        new = torch.cat([torch.zeros(width, dtype=torch.bool), torch.ones(count, dtype=torch.bool)])
        return cls(index, new, init=init, noise=noise, seed=seed)

    def decided(self, *, init: str, noise: float, seed: int) -> GroupChange:
        """This map with the growth rule's decisions filled in."""
        return dataclasses.replace(self, init=init, noise=noise, seed=seed)


@dataclass(frozen=True)
class WidthChange:
    kind: str  # "grow" or "prune"
    groups: dict[str, GroupChange] = field(default_factory=dict)

    def widths(self, before: dict[str, int]) -> dict[str, int]:
        return {name: self.groups[name].width if name in self.groups else w for name, w in before.items()}

    def summary(self, before: dict[str, int]) -> dict[str, list[int]]:
        return {name: [before[name], c.width] for name, c in self.groups.items()}

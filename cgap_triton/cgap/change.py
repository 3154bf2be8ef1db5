"""WidthChange: one structural change, as an index map per channel group."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class GroupChange:
    """New slot j of the group takes old unit ``index[j]`` (-1: a new unit with no parent).

    ``new[j]`` marks units added by this change (a child copies its parent but is still new: its
    outgoing weights and optimizer state start at zero).
    """

    index: torch.Tensor  # [new_width] int64, CPU
    new: torch.Tensor  # [new_width] bool, CPU

    @property
    def width(self) -> int:
        return self.index.numel()

    @classmethod
    def keep(cls, kept: torch.Tensor) -> GroupChange:
        return cls(kept.long(), torch.zeros(kept.numel(), dtype=torch.bool))

    @classmethod
    def grow(cls, width: int, parents: torch.Tensor | None, count: int) -> GroupChange:
        """Append ``count`` units: children of ``parents``, or parentless units when ``parents`` is None."""
        extra = parents.long() if parents is not None else torch.full((count,), -1, dtype=torch.long)
        index = torch.cat([torch.arange(width), extra])
        return cls(index, torch.cat([torch.zeros(width, dtype=torch.bool), torch.ones(count, dtype=torch.bool)]))


@dataclass(frozen=True)
class WidthChange:
    kind: str  # "grow" or "prune"
    groups: dict[str, GroupChange] = field(default_factory=dict)

    def widths(self, before: dict[str, int]) -> dict[str, int]:
        return {name: self.groups[name].width if name in self.groups else w for name, w in before.items()}

    def summary(self, before: dict[str, int]) -> dict[str, list[int]]:
        return {name: [before[name], c.width] for name, c in self.groups.items()}

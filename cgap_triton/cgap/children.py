"""How new units' incoming filters are drawn, for the growth rules that do more than copy.

``orthogonal_zero_out``: each new filter is a random direction with the part the existing filters already
span removed, then made orthogonal to the other new filters, and scaled to the layer's mean filter norm.
A new unit then responds to input patterns no existing unit responds to in the same way, so it cannot start
as a twin of another unit (as copies do: a copy with zero outgoing weights gets the same gradient as its
parent and the pair moves as one). Its outgoing weights are zero, so the network's function is unchanged.
Where the existing filters already span the whole fan-in (a first layer with 27 inputs and 32 filters), no
direction is left: the new filters are then only made orthogonal to each other, as far as the fan-in allows.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def orthogonal_filters(existing: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """``count`` new filters shaped like ``existing[0]``: random, orthogonal to ``existing`` where the fan-in
    leaves room, orthonormal among themselves, scaled to the mean norm of the existing filters.

    Computed in float64 on the CPU from a generator seeded with ``seed`` (the same on every device and rank),
    returned in ``existing``'s dtype and device.
    """
    fan_in = existing[0].numel()
    old = existing.detach().reshape(existing.shape[0], fan_in).to("cpu", torch.float64)
    generator = torch.Generator().manual_seed(seed)
    new = torch.randn(count, fan_in, generator=generator, dtype=torch.float64)
    if old.shape[0]:
        basis = torch.linalg.svd(old, full_matrices=False).Vh  # rows: an orthonormal basis of the old span
        s = torch.linalg.svdvals(old)
        basis = basis[s > s.max() * 1e-6] if s.numel() else basis[:0]
        if basis.shape[0] < fan_in:  # room left: keep only the part the existing filters do not span
            new = new - (new @ basis.T) @ basis
    q = torch.linalg.qr(new.T).Q.T  # orthonormal among themselves (the first min(count, fan_in) of them)
    new = torch.cat([q, new[q.shape[0] :] / new[q.shape[0] :].norm(dim=1, keepdim=True).clamp(min=1e-12)])
    scale = old.norm(dim=1).mean() if old.shape[0] else torch.tensor(1.0, dtype=torch.float64)
    return (new * scale).reshape(count, *existing.shape[1:]).to(existing.device, existing.dtype)


TWIN_COSINE = 0.9  # units whose incoming filters are this aligned compute nearly the same thing


def twin_fraction(filters: torch.Tensor, threshold: float = TWIN_COSINE) -> float:
    """The fraction of units whose incoming filter has cosine similarity above ``threshold`` with another unit's.

    Copied children that never leave their parents show up here; units drawn to differ do not."""
    return float(twin_share(filters, threshold))


@torch.no_grad()
def twin_share(filters: torch.Tensor, threshold: float = TWIN_COSINE) -> torch.Tensor:
    """:func:`twin_fraction` as a 0-d tensor on the filters' device, so that many groups need one host read."""
    n = filters.shape[0]
    if n < 2:
        return filters.new_zeros((), dtype=torch.float32)
    flat = filters.detach().reshape(n, -1).float()
    flat = flat / flat.norm(dim=1, keepdim=True).clamp(min=1e-12)
    cosine = flat @ flat.T
    cosine.fill_diagonal_(-1.0)
    return (cosine.max(dim=1).values > threshold).float().mean()

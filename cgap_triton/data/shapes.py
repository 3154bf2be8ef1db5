"""Synthetic "shapes": a procedurally generated 32×32 RGB benchmark, made on the fly from a seed.

It exists because the real benchmarks (CIFAR, SVHN) cannot be downloaded here and the bundled digits
are too easy to tell methods apart. Everything it produces is synthetic and is labelled so.

A class is a *composition*: an unordered pair of parts from a fixed catalogue of shapes, strokes and
textures (disc, ring, triangle, plus, grating, ...), so recognising a class means finding both parts
and telling each from the parts it shares with other classes. Every image varies by nuisance only:
the parts' positions, sizes, aspect, rotations and colours, a shaded background, clutter strokes and
pixel noise. All drawing is batched tensor arithmetic on signed distance-like fields (positive inside
a part, in units of the part's radius), so 20,000 images take seconds on a CPU.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch

from ..recipe import DataConfig
from .splits import DataError, Split

IMAGE_SIZE = 32
# Nuisance ranges; they set how hard the benchmark is (calibrated so that capacity matters, see
# docs/results/shapes_capacity.md). Sizes are in pixels; colours and noise on the 0–1 scale.
PART_RADIUS = (4.5, 7.5)
ASPECT = (0.8, 1.25)
CENTRE_JITTER = 4.0
CLUTTER_STROKES = (1, 5)  # [low, high) per image
NOISE_STD = (0.02, 0.10)
MIN_CONTRAST = 0.35
CHUNK = 2048  # images drawn at once: bounds memory to a few tens of MB


def _box(u, v):
    return 1 - torch.maximum(u.abs(), v.abs())


def _slab(across, along, half_width):
    return torch.minimum(half_width - across.abs(), 1 - along.abs())


def _disc(u, v):
    return 1 - torch.hypot(u, v)


def _ring(u, v):
    r = torch.hypot(u, v)
    return torch.minimum(r - 0.55, 1 - r)


def _square(u, v):
    return _box(u, v) * 1.15 - 0.15  # a little smaller than the disc, for a similar area


def _frame(u, v):
    m = torch.maximum(u.abs(), v.abs())
    return torch.minimum(m - 0.55, 1 - m)


def _triangle(u, v):
    normals = [(math.cos(a), math.sin(a)) for a in (math.pi / 2, 7 * math.pi / 6, 11 * math.pi / 6)]
    return 0.5 - torch.stack([u * nx + v * ny for nx, ny in normals]).amax(0)


def _plus(u, v):
    return torch.maximum(_slab(u, v, 0.25), _slab(v, u, 0.25))


def _bars(u, v):
    return torch.maximum(_slab(u - 0.5, v, 0.2), _slab(u + 0.5, v, 0.2))


def _corner(u, v):
    return torch.maximum(_slab(u + 0.7, v, 0.25), _slab(v - 0.7, u, 0.25))


def _grating(u, v):
    return torch.minimum(_box(u, v), torch.sin(2.5 * math.pi * u) / (2.5 * math.pi))


def _checker(u, v):
    w = 1.5 * math.pi
    return torch.minimum(_box(u, v), torch.sin(w * u) * torch.sin(w * v) / w)


def _star(u, v):
    return 0.62 + 0.33 * torch.cos(5 * torch.atan2(v, u)) - torch.hypot(u, v)


def _crescent(u, v):
    return torch.minimum(1 - torch.hypot(u, v), torch.hypot(u - 0.55, v) - 0.75)


# The catalogue's order is part of the benchmark's definition: class k is always the same pair.
PARTS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "disc": _disc,
    "triangle": _triangle,
    "plus": _plus,
    "grating": _grating,
    "ring": _ring,
    "corner": _corner,
    "checker": _checker,
    "square": _square,
    "bars": _bars,
    "star": _star,
    "frame": _frame,
    "crescent": _crescent,
}


def class_parts(num_classes: int) -> list[tuple[int, int]]:
    """The (part, part) pair of each class: the first ``num_classes`` unordered pairs of the catalogue, in
    an order where consecutive classes share parts (so no part alone identifies a class)."""
    pairs = sorted(itertools.combinations_with_replacement(range(len(PARTS)), 2), key=lambda p: (p[1], p[0]))
    if not 2 <= num_classes <= len(pairs):
        raise DataError(f"data.shapes_classes: expected between 2 and {len(pairs)} classes, got {num_classes}")
    return pairs[:num_classes]


def generate(n: int, num_classes: int = 10, seed: int = 0) -> Split:
    """``n`` synthetic images (uint8 [n, 3, 32, 32]) with balanced labels (int64), a pure function of the
    arguments: the same call gives the same images on any machine with the same torch."""
    with torch.device("cpu"):  # drawn on the CPU whatever the caller's default device: the same images everywhere
        return _generate(n, num_classes, seed)


def _generate(n: int, num_classes: int, seed: int) -> Split:
    pairs = torch.tensor(class_parts(num_classes))
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=generator)]
    images = torch.empty(n, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    for start in range(0, n, CHUNK):
        chunk = labels[start : start + CHUNK]
        chunk_gen = torch.Generator().manual_seed(seed * 1_000_003 + start + 1)
        images[start : start + CHUNK] = _draw(pairs[chunk], chunk_gen)
    return Split(images, labels)


def make_shapes(cfg: DataConfig) -> tuple[Split, Split, int]:
    """Training pool (``data.shapes_images``, validation is carved from it) and test split
    (``data.test_size``), from disjoint random streams of ``data.shapes_seed``."""
    classes = cfg.shapes_classes
    train = generate(cfg.shapes_images, classes, seed=2 * cfg.shapes_seed)
    test = generate(cfg.test_size, classes, seed=2 * cfg.shapes_seed + 1)
    return train, test, classes


def _uniform(shape, lo, hi, g):
    return lo + (hi - lo) * torch.rand(shape, generator=g)


def _draw(parts: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Images for a batch of part pairs [n, 2]: background, clutter strokes, both parts, noise."""
    n, size = parts.shape[0], IMAGE_SIZE
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    y, x = coords.view(1, size, 1), coords.view(1, 1, size)

    # Background: a random colour with a linear shading ramp in a random direction.
    background = torch.rand(n, 3, 1, 1, generator=g)
    angle = _uniform((n, 1, 1), 0, 2 * math.pi, g)
    ramp = ((x - size / 2) * torch.cos(angle) + (y - size / 2) * torch.sin(angle)) / size
    image = background + _uniform((n, 1, 1, 1), -0.3, 0.3, g) * ramp.unsqueeze(1)

    # Clutter: thin strokes that belong to no class; they break up outlines and mimic edges.
    strokes = torch.randint(*CLUTTER_STROKES, (n,), generator=g)
    for k in range(CLUTTER_STROKES[1] - 1):
        a = torch.rand(n, 2, generator=g) * size
        b = a + _uniform((n, 2), -12, 12, g)
        mask = _stroke(a, b, x, y, width=_uniform((n, 1, 1), 0.8, 1.6, g)) * (k < strokes).view(n, 1, 1)
        image = _paint(image, mask, _contrasting(background, g))

    # Two parts, side by side along a random axis, each with its own size, aspect, rotation and colour.
    radius = _uniform((n, 2), *PART_RADIUS, g)
    axis = _uniform((n,), 0, 2 * math.pi, g)
    direction = torch.stack([torch.cos(axis), torch.sin(axis)], 1)
    centre = size / 2 + _uniform((n, 2), -CENTRE_JITTER, CENTRE_JITTER, g)
    half_gap = (radius.sum(1, keepdim=True) + _uniform((n, 1), 0.5, 3.0, g)) / 2
    for slot, sign in enumerate((-1.0, 1.0)):
        r = radius[:, slot].view(n, 1, 1)
        c = (centre + sign * half_gap * direction).clamp(radius[:, slot : slot + 1], size - radius[:, slot : slot + 1])
        rot = _uniform((n, 1, 1), 0, 2 * math.pi, g)
        aspect = _uniform((n, 1, 1), *ASPECT, g)
        dx, dy = x - c[:, 0].view(n, 1, 1), y - c[:, 1].view(n, 1, 1)
        u = (dx * torch.cos(rot) + dy * torch.sin(rot)) / (r * aspect)
        v = (-dx * torch.sin(rot) + dy * torch.cos(rot)) * aspect / r
        field = torch.empty(n, size, size)
        for p, shape_fn in enumerate(PARTS.values()):
            rows = (parts[:, slot] == p).nonzero().squeeze(1)
            if rows.numel():
                field[rows] = shape_fn(u[rows], v[rows])
        # Field units are radii; times the radius in pixels gives a one-pixel antialiased edge.
        image = _paint(image, (field * r + 0.5).clamp(0, 1), _contrasting(background, g))

    noise = _uniform((n, 1, 1, 1), *NOISE_STD, g) * torch.randn(n, 3, size, size, generator=g)
    return ((image + noise).clamp(0, 1) * 255).round().to(torch.uint8)


def _stroke(a, b, x, y, width):
    """Antialiased mask of the segments a→b ([n, 2] pixel coordinates), ``width`` pixels wide."""
    ab = b - a
    ax, ay = a[:, 0].view(-1, 1, 1), a[:, 1].view(-1, 1, 1)
    bx, by = ab[:, 0].view(-1, 1, 1), ab[:, 1].view(-1, 1, 1)
    t = (((x - ax) * bx + (y - ay) * by) / (bx * bx + by * by).clamp(min=1e-6)).clamp(0, 1)
    distance = torch.hypot(x - ax - t * bx, y - ay - t * by)
    return (width / 2 - distance + 0.5).clamp(0, 1)


def _contrasting(background: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A random colour per image at least MIN_CONTRAST (RGB distance) from the background colour."""
    colour = torch.rand(background.shape, generator=g)
    too_close = (colour - background).norm(dim=1, keepdim=True) < MIN_CONTRAST
    # Half the range away in every channel: an RGB distance of 0.87 whatever the background.
    return torch.where(too_close, torch.where(background > 0.5, background - 0.5, background + 0.5), colour)


def _paint(image: torch.Tensor, mask: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    mask = mask.unsqueeze(1)
    return image * (1 - mask) + colour * mask

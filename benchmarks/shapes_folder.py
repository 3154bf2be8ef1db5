"""The synthetic "shapes" data set written out as an ImageFolder tree, to train on the same images from files.

    python -m benchmarks.shapes_folder OUT                          # recipes/shapes_vgg.toml's images
    python -m benchmarks.shapes_folder OUT --images 20000 --size 64
    python -m cgap_triton recipe recipes/shapes_vgg.toml data.name=imagefolder data.root=OUT data.image_size=32

``OUT/train/<class>/<i>.png`` are the shapes training images (``make_shapes``: the pool validation is
carved from), ``OUT/val/<class>/<i>.png`` its test images, so ``data.name = "imagefolder"`` reads them as
train/ and test split; that is the streamed path (decoding, DataLoader workers, transfers) on images whose
in-memory twin is known. Class k's folder is ``<k, two digits>_<part>_<part>``: sorted, the names keep
shapes' label order. ``<i>`` is the image's index in its split. The images are drawn at 32×32; ``--size``
resizes them (bilinear) so that bigger files can be timed, it draws nothing new. The carving differs from
``data.name = "shapes"``: a folder is listed class by class, so the same ``data.split_seed`` picks other
validation images; and imagefolder's views (random resized crop, or resize + centre crop) are not shapes'
plain images.

Refuses to write into a folder that is not empty: a second run into the same folder would mix two sets.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

from cgap_triton.data.shapes import IMAGE_SIZE, PARTS, class_parts, make_shapes
from cgap_triton.data.splits import DataError, Split
from cgap_triton.recipe import DataConfig


def class_names(num_classes: int) -> list[str]:
    """Folder names whose sorted order is the label order (so ImageFolder gives class k label k)."""
    parts = list(PARTS)
    return [f"{k:02d}_{parts[a]}_{parts[b]}" for k, (a, b) in enumerate(class_parts(num_classes))]


def write_split(split: Split, folder: Path, names: list[str], size: int) -> None:
    for name in names:
        (folder / name).mkdir(parents=True)
    for i, (image, label) in enumerate(zip(split.images, split.labels.tolist())):
        picture = Image.fromarray(image.permute(1, 2, 0).numpy())
        if size != IMAGE_SIZE:
            picture = picture.resize((size, size), Image.Resampling.BILINEAR)
        picture.save(folder / names[label] / f"{i:06d}.png")


def render(out: Path, images: int, test_images: int, size: int, classes: int = 10, seed: int = 0) -> None:
    """Write the tree; ValueError when ``out`` is not an empty folder (or a path that does not exist yet)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(
            f"{out}: expected an empty or new folder, got {'a file' if not out.is_dir() else 'one with files'}"
        )
    cfg = DataConfig(
        name="shapes", shapes_images=images, test_size=test_images, shapes_classes=classes, shapes_seed=seed
    )
    train, test, num_classes = make_shapes(cfg)
    names = class_names(num_classes)
    write_split(train, out / "train", names, size)
    write_split(test, out / "val", names, size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the folder to create (new or empty)")
    parser.add_argument("--images", type=int, default=8000, help="training images (data.shapes_images; default 8000)")
    parser.add_argument("--test-images", type=int, default=3000, help="val/ images (data.test_size; default 3000)")
    parser.add_argument(
        "--size", type=int, default=IMAGE_SIZE, help=f"side of the written images (default {IMAGE_SIZE})"
    )
    parser.add_argument("--classes", type=int, default=10, help="data.shapes_classes (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="data.shapes_seed (default 0)")
    args = parser.parse_args(argv)
    for flag, value, lo in (
        ("--images", args.images, 1),
        ("--test-images", args.test_images, 1),
        ("--size", args.size, 1),
        ("--seed", args.seed, 0),
    ):
        if value < lo:
            parser.error(f"{flag}: expected at least {lo}, got {value}")
    try:
        render(args.out, args.images, args.test_images, args.size, args.classes, args.seed)
    except (ValueError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.images} training and {args.test_images} test images under {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

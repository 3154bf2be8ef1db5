"""The synthetic "shapes" benchmark: deterministic from its seed, balanced, well-formed, configurable."""

import pytest
import torch

from cgap_triton.data import DataError, load_dataset
from cgap_triton.data.shapes import PARTS, class_parts, generate
from cgap_triton.recipe import DataConfig


def test_same_seed_gives_the_same_images_and_labels():
    a, b = generate(120, seed=7), generate(120, seed=7)
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.labels, b.labels)


def test_different_seeds_give_different_images():
    a, b = generate(120, seed=0), generate(120, seed=1)
    differing = (a.images != b.images).flatten(1).any(1).float().mean()
    assert differing == 1.0
    assert not torch.equal(a.labels, b.labels)


@pytest.mark.parametrize("classes, n", [(10, 200), (3, 31), (25, 75)])
def test_classes_are_balanced(classes, n):
    counts = generate(n, num_classes=classes, seed=0).labels.bincount(minlength=classes)
    assert counts.numel() == classes
    assert counts.max() - counts.min() <= 1


def test_images_are_uint8_rgb_32x32_and_use_the_whole_range():
    split = generate(200, seed=0)
    assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
    assert split.images.shape == (200, 3, 32, 32) and split.labels.shape == (200,)
    assert split.labels.min() >= 0 and split.labels.max() <= 9
    assert split.images.min() < 20 and split.images.max() > 235
    # Not flat: every image carries structure (parts, clutter, noise) on top of its background.
    assert split.images.float().flatten(1).std(1).min() > 5


def test_classes_are_distinct_pairs_of_catalogue_parts():
    pairs = class_parts(30)
    assert len(set(pairs)) == 30
    assert all(0 <= a < len(PARTS) and 0 <= b < len(PARTS) for a, b in pairs)
    # No part alone names a class among the first 10: each part appears in several classes.
    first = class_parts(10)
    for part in {p for pair in first for p in pair}:
        assert sum(part in pair for pair in first) >= 2


def test_too_many_classes_is_refused_with_the_limit():
    with pytest.raises(DataError, match=r"data.shapes_classes: expected between 2 and \d+ classes, got 500"):
        class_parts(500)


def test_load_dataset_carves_validation_and_keeps_test_apart():
    cfg = DataConfig(name="shapes", shapes_images=300, val_size=60, test_size=100, shapes_classes=4)
    data = load_dataset(cfg)
    assert data.synthetic and data.num_classes == 4
    assert (len(data.train), len(data.val), len(data.test)) == (240, 60, 100)
    assert data.in_channels == 3 and data.image_size == 32
    # The test split comes from its own random stream: none of its images is a training image.
    train = {bytes(img.numpy()) for img in data.train.images}
    assert not any(bytes(img.numpy()) in train for img in data.test.images)

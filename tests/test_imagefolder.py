"""``data.name = "imagefolder"``: tiny ImageFolder trees of PNGs, loaded, carved, streamed and checked.

Each fixture tree has three classes (ant, bee, cat); a training image is 12×12 (one in three 14×10, so
that resizing and cropping see both aspects) with its class's channel at 200 and the rest random.
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runner import QUICK, cli
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/ is not an installed package

from benchmarks import shapes_folder  # noqa: E402
from cgap_triton.data import (
    Batches,
    DataError,
    FolderBatches,
    FolderSplit,
    Split,
    channel_mean_std,
    load_dataset,
    make_batches,
)
from cgap_triton.data.imagefolder import crop_box, eval_view, load_rgb, resolve_workers
from cgap_triton.recipe import DataConfig, Recipe, RecipeError, load_recipe

CLASSES = ["ant", "bee", "cat"]


def write_image(path, seed: int, label: int, size=(12, 12)) -> None:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    pixels[..., label] = 200
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def make_tree(root, train: int = 6, val: int = 2):
    for part, n in (("train", train), ("val", val)):
        for label, name in enumerate(CLASSES):
            for i in range(n):
                size = (14, 10) if i % 3 == 2 else (12, 12)
                write_image(root / part / name / f"{i:03d}.png", 1000 * (part == "val") + 100 * label + i, label, size)
    return root


@pytest.fixture
def tree(tmp_path):
    return make_tree(tmp_path / "images")


def config(root, **kwargs) -> DataConfig:
    return DataConfig(
        **{"name": "imagefolder", "root": str(root), "val_size": 6, "image_size": 8, "workers": 0} | kwargs
    )


def paths(split: FolderSplit) -> list[str]:
    return [split.path(i) for i in range(len(split))]


def raw(split: FolderSplit, batch_size: int = 4, **kwargs) -> FolderBatches:
    """Batches with mean 0 and std 1: the floats are the pixel values the pipeline produced."""
    return FolderBatches(split, batch_size, (0.0,) * 3, (1.0,) * 3, **kwargs)


def same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, x2) and torch.equal(y, y2) for (x, y), (x2, y2) in zip(a, b))


# ------------------------------------------------------------------------------------------------ loading


def test_lengths_classes_and_labels(tree):
    data = load_dataset(config(tree))
    assert (len(data.train), len(data.val), len(data.test), data.num_classes) == (12, 6, 6, 3)
    assert (data.in_channels, data.image_size, data.augment, data.synthetic) == (3, 8, "rrc_flip", False)
    for split, part in ((data.train, "train"), (data.val, "train"), (data.test, "val")):
        for path, label in zip(paths(split), split.labels.tolist()):
            assert os.path.isabs(path) and path.split(os.sep)[-3:-1] == [part, CLASSES[label]]
    # The test split is val/ in ImageFolder's order: class by class, files sorted.
    assert [p.split(os.sep)[-2:] for p in paths(data.test)] == [[c, f"{i:03d}.png"] for c in CLASSES for i in range(2)]
    assert load_dataset(config(tree, image_size=0)).image_size == 224


def test_validation_is_carved_from_train_with_the_split_seed(tree):
    every = sorted(str(p) for p in (tree / "train").rglob("*.png"))
    for seed in (0, 5):
        data = load_dataset(config(tree, split_seed=seed))
        order = torch.randperm(18, generator=torch.Generator().manual_seed(seed)).tolist()
        assert paths(data.val) == [every[i] for i in order[:6]]
        assert paths(data.train) == [every[i] for i in order[6:]]
        assert paths(load_dataset(config(tree, split_seed=seed)).val) == paths(data.val)  # deterministic
    assert paths(load_dataset(config(tree, split_seed=0)).val) != paths(load_dataset(config(tree, split_seed=5)).val)
    small = load_dataset(config(tree, train_size=4, split_seed=5))
    assert paths(small.train) == paths(data.train)[:4] and paths(small.val) == paths(data.val)


def test_mean_and_std_are_measured_at_the_evaluation_view(tree):
    data = load_dataset(config(tree))  # 12 training images: the sample of up to 256 is all of them
    images = torch.stack([eval_view(load_rgb(p), 8) for p in sorted(paths(data.train))])
    assert data.mean == pytest.approx(channel_mean_std(images)[0]) and data.std == pytest.approx(
        channel_mean_std(images)[1]
    )
    x = torch.cat([x for x, _ in make_batches(data.train, 5, data.mean, data.std)])
    assert x.shape == (12, 3, 8, 8) and x.dtype == torch.float32
    assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-4 and (x.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-3


def test_evaluation_view_is_torchvisions_resize_and_centre_crop(tree):
    import torchvision.transforms as T

    data = load_dataset(config(tree))
    expected = T.Compose([T.Resize(round(8 / 0.875)), T.CenterCrop(8), T.PILToTensor()])
    batches = list(raw(data.test, 4))
    assert [tuple(x.shape) for x, _ in batches] == [(4, 3, 8, 8), (2, 3, 8, 8)]
    got = torch.cat([x for x, _ in batches])
    labels = torch.cat([y for _, y in batches])
    assert labels.dtype == torch.int64 and labels.tolist() == [0, 0, 1, 1, 2, 2]
    for i, path in enumerate(paths(data.test)):
        with Image.open(path) as image:
            assert torch.equal(got[i], expected(image.convert("RGB")).float())


def test_random_resized_crop_boxes():
    import random

    rng = random.Random(0)
    for _ in range(500):
        top, left, h, w = crop_box(40, 30, rng)
        assert 0 <= top and top + h <= 30 and 0 <= left and left + w <= 40
        assert 0.08 * 1200 * 0.8 <= h * w <= 1200 and 0.7 <= w / h <= 1.45
    assert crop_box(100, 1, rng) == (0, 49, 1, 1)  # no crop fits: the centre at the widest allowed aspect


def test_string_seeds_give_the_same_draws_in_every_process():
    """random.Random(str) hashes with SHA-512, not with the per-process salted str hash."""
    import subprocess
    import sys

    code = "import random; print(random.Random('3/1/7').random())"
    runs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": s}
        ).stdout.strip()
        for s in ("1", "2")
    }
    assert len(runs) == 1


# ------------------------------------------------------------------------------------------------ batches


@pytest.mark.parametrize("workers", [0, 2])
def test_epochs_depend_only_on_seed_epoch_and_image(tree, workers):
    data = load_dataset(config(tree))

    def epoch(seed, e, start=0, workers=workers):
        return list(raw(data.train, 4, augment="rrc_flip", shuffle=True, seed=seed, workers=workers).epoch(e, start))

    first = epoch(0, 2)
    torch.manual_seed(123)  # the global generator plays no part
    assert same(first, epoch(0, 2))
    assert same(first[1:], epoch(0, 2, start=1)) and same(first[2:], epoch(0, 2, start=2))
    assert epoch(0, 2, start=3) == []
    assert same(first, epoch(0, 2, workers=2 - workers))  # whichever process decodes
    assert len(first) == 3 and sorted(torch.cat([y for _, y in first]).tolist()) == sorted(data.train.labels.tolist())
    other_epoch, other_seed = epoch(0, 3), epoch(1, 2)
    assert not torch.equal(first[0][0], other_epoch[0][0]) and not torch.equal(first[0][0], other_seed[0][0])
    assert all(x.shape == (4, 3, 8, 8) and y.dtype == torch.int64 for x, y in first)


def test_resumed_epoch_decodes_nothing_before_its_start(tree, monkeypatch):
    from cgap_triton.data import imagefolder

    data = load_dataset(config(tree))
    opened = []
    original = imagefolder.load_rgb
    monkeypatch.setattr(imagefolder, "load_rgb", lambda path: opened.append(path) or original(path))
    tail = list(raw(data.train, 4, shuffle=True, seed=1).epoch(0, start=2))
    assert len(tail) == 1 and len(opened) == 4


def test_augmentation_crops_and_flips(tree):
    """Training views differ from the evaluation view and between epochs; flips are about half."""
    data = load_dataset(config(tree, train_size=12))
    plain = torch.cat([x for x, _ in raw(data.train, 12)])
    views = [torch.cat([x for x, _ in raw(data.train, 12, augment="rrc_flip").epoch(e)]) for e in range(4)]
    assert all(not torch.equal(v, plain) for v in views) and not torch.equal(views[0], views[1])
    assert all(v.min() >= 0 and v.max() <= 255 and v.shape == plain.shape for v in views)


def test_shards_of_ranks_make_up_the_global_batch(tree):
    data = load_dataset(config(tree))
    kwargs = dict(augment="rrc_flip", shuffle=True, drop_last=True, seed=3)
    whole = list(raw(data.train, 6, **kwargs).epoch(2))
    shards = [list(raw(data.train, 6, shard=(r, 2), **kwargs).epoch(2)) for r in range(2)]
    assert len(whole) == 2
    for b, (x, y) in enumerate(whole):
        for r in range(2):
            assert torch.equal(shards[r][b][0], x[r::2]) and torch.equal(shards[r][b][1], y[r::2])


def test_make_batches_picks_the_kind_and_to_keeps_the_device(tree):
    data = load_dataset(config(tree))
    moved = data.train.to("cpu")
    assert isinstance(moved, FolderSplit) and moved.device == torch.device("cpu") and len(moved) == 12
    assert isinstance(make_batches(moved, 4, data.mean, data.std), FolderBatches)
    split = Split(torch.zeros(5, 3, 8, 8, dtype=torch.uint8), torch.arange(5))
    assert isinstance(make_batches(split, 4, (0.0,) * 3, (1.0,) * 3, augment="crop"), Batches)
    nhwc = list(make_batches(moved, 4, data.mean, data.std, channels_last=True, drop_last=True))
    assert len(nhwc) == 3 and nhwc[0][0].is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="rrc_flip"):
        FolderBatches(moved, 4, data.mean, data.std, augment="crop_flip")


def test_auto_workers_leave_a_cpu_to_training(monkeypatch):
    assert resolve_workers(3) == 3 and resolve_workers(0) == 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(32)), raising=False)
    assert resolve_workers(-1) == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert resolve_workers(-1) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0}, raising=False)
    assert resolve_workers(-1) == 0


# ------------------------------------------------------------------------------------------------- errors


def load_error(root, **kwargs) -> str:
    with pytest.raises(DataError) as err:
        load_dataset(config(root, **kwargs))
    return str(err.value)


def test_layout_errors_name_the_folder(tmp_path):
    assert f"{tmp_path / 'nowhere'} is not a folder" in load_error(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    message = load_error(tmp_path / "empty")
    assert "no train/ or val/" in message and str(tmp_path / "empty") in message
    (tmp_path / "only_train").mkdir()
    (tmp_path / "only_train" / "train").mkdir()
    assert "no val/ in" in load_error(tmp_path / "only_train")
    (tmp_path / "only_train" / "val").mkdir()
    message = load_error(tmp_path / "only_train")
    assert f"{tmp_path / 'only_train' / 'train'} has no class subfolders" in message


def test_empty_class_folder_is_named(tree):
    (tree / "train" / "dog").mkdir()
    (tree / "train" / "dog" / "notes.txt").write_text("no images here")
    (tree / "val" / "dog").mkdir()
    message = load_error(tree)
    assert f"class folder {tree / 'train' / 'dog'} holds no images" in message and ".png" in message


def test_differing_classes_are_named(tree):
    (tree / "val" / "bee").rename(tree / "val" / "bees")
    write_image(tree / "val" / "dog" / "0.png", 1, 0)
    message = load_error(tree)
    assert (
        str(tree / "val") in message and "missing from val/: bee" in message and "not in train/: bees, dog" in message
    )


def test_undecodable_first_image_fails_at_load(tree):
    bad = tree / "val" / "bee" / "000.png"
    bad.write_bytes(b"not a png at all")
    assert f"{bad}: cannot be read as an image" in load_error(tree)


def test_undecodable_training_image_fails_while_measuring_the_mean(tree):
    bad = tree / "train" / "cat" / "004.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated after the header
    assert f"{bad}: cannot be read as an image" in load_error(tree)


@pytest.mark.parametrize("workers", [0, 2])
def test_undecodable_image_in_a_batch_is_a_data_error_naming_it(tree, workers):
    bad = tree / "val" / "cat" / "001.png"
    bad.write_bytes(bad.read_bytes()[:60])
    data = load_dataset(config(tree))  # only first images and the training sample are decoded at load
    with pytest.raises(DataError) as err:
        list(raw(data.test, 2, workers=workers))
    assert str(err.value).startswith(f"imagefolder: {bad}: cannot be read as an image")
    assert "Traceback" not in str(err.value)


def test_recipe_keys_belong_to_their_data():
    recipe = Recipe()
    with pytest.raises(RecipeError, match="data.image_size: only used with"):
        recipe.replace(**{"data.name": "cifar10", "data.image_size": 32})
    with pytest.raises(RecipeError, match='data.augment: "crop" and "crop_flip"'):
        recipe.replace(**{"data.name": "imagefolder", "data.augment": "crop"})
    with pytest.raises(RecipeError, match='data.augment: "rrc_flip"'):
        recipe.replace(**{"data.name": "shapes", "data.augment": "rrc_flip"})
    with pytest.raises(RecipeError, match="data.workers: expected a value >= -1"):
        recipe.replace(**{"data.workers": -2})
    ok = recipe.replace(**{"data.name": "imagefolder", "data.image_size": 64, "data.augment": "none"})
    assert (ok.data.image_size, ok.data.workers, ok.data.augment) == (64, -1, "none")
    assert load_recipe(QUICK).data.image_size == 0  # the existing recipes are unchanged


# ------------------------------------------------------------------------------------------------ the CLI

IMAGEFOLDER_RUN = [
    "data.name=imagefolder",
    "data.image_size=16",
    "data.val_size=6",
    "data.batch_size=4",
    "train.epochs=4",
    "cgap.grow.every=0.5",
    "cgap.prune.every=0.5",
    "cgap.stabilize=0.05",
    "train.log_every=1",
    "checkpoint.every=2",
]


def test_cli_trains_on_a_folder_end_to_end(tree, tmp_path):
    out = tmp_path / "run"
    result = cli("recipe", QUICK, f"data.root={tree}", *IMAGEFOLDER_RUN, "--out", str(out), timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"] == "imagefolder" and 0 <= summary["test_accuracy"] <= 1
    assert summary["structural_changes"] >= 1
    assert 'name = "imagefolder"' in (out / "recipe.toml").read_text()


def test_cli_data_errors_exit_2_without_traceback(tree, tmp_path):
    result = cli("recipe", QUICK, f"data.root={tmp_path / 'nowhere'}", *IMAGEFOLDER_RUN, "--out", str(tmp_path / "a"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{tmp_path / 'nowhere'} is not a folder" in result.stderr and not (tmp_path / "a").exists()
    # A broken test image is found only when the test split is read, at the end: still a message, status 2.
    bad = tree / "val" / "ant" / "001.png"
    bad.write_bytes(bad.read_bytes()[:60])
    one_epoch = ["train.epochs=1", "cgap.grow.enabled=false", "cgap.prune.enabled=false", "cgap.seed_fraction=1.0"]
    run = [f"data.root={tree}", *IMAGEFOLDER_RUN, *one_epoch, "--out", str(tmp_path / "b")]
    result = cli("recipe", QUICK, *run, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"error: imagefolder: {bad}: cannot be read as an image" in result.stderr


# -------------------------------------------------------------------------------------- shapes as a folder


def test_shapes_folder_writes_the_shapes_images(tmp_path, capsys):
    from cgap_triton.data.shapes import make_shapes

    out = tmp_path / "shapes"
    assert shapes_folder.main([str(out), "--images", "40", "--test-images", "12", "--classes", "4"]) == 0
    train, test, _ = make_shapes(DataConfig(name="shapes", shapes_images=40, test_size=12, shapes_classes=4))
    names = shapes_folder.class_names(4)
    assert sorted(names) == names and names[0] == "00_disc_disc"
    for part, split in (("train", train), ("val", test)):
        for i in (0, len(split) - 1):
            path = out / part / names[int(split.labels[i])] / f"{i:06d}.png"
            assert torch.equal(torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1), split.images[i])
    data = load_dataset(config(out, val_size=8, image_size=16))
    assert (len(data.train), len(data.val), len(data.test), data.num_classes) == (32, 8, 12, 4)
    assert sorted(data.test.labels.tolist()) == sorted(test.labels.tolist())
    # Not into a folder that holds anything; --size resizes.
    assert shapes_folder.main([str(out), "--images", "4"]) == 2
    assert "expected an empty or new folder" in capsys.readouterr().err
    assert shapes_folder.main([str(tmp_path / "big"), "--images", "4", "--test-images", "4", "--size", "48"]) == 0
    assert Image.open(next((tmp_path / "big" / "train").rglob("*.png"))).size == (48, 48)

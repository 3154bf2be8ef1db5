"""Data sets in their exact on-disk formats, loaded through torchvision, and the batched augmentation pipeline.

The files written here are tiny but byte-for-byte in the official layouts: CIFAR's python-2 pickles
(``b"data"`` uint8 rows of 3072 = three 32×32 planes, ``b"labels"`` / ``b"fine_labels"``) and SVHN's
MATLAB files (``X`` as [32, 32, 3, N] uint8, ``y`` as [N, 1] with 10 meaning the digit 0). Only
torchvision's md5 check is patched, and only in the tests: the real files' checksums cannot match.
"""

import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cgap_triton.data import Batches, DataError, Split, channel_mean_std, load_dataset
from cgap_triton.recipe import DataConfig

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------- fake files


class _Py2Pickler(pickle._Pickler):
    """Writes str and bytes (numpy's raw buffers too) as python-2 byte strings, as in the official CIFAR
    files: read back as b"data" with encoding="bytes", and as "data" with the encoding="latin1" that
    torchvision uses."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = dispatch[bytes] = _save_py2_str


def _dump_py2(obj, path: Path) -> None:
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


def pattern(index: int) -> np.ndarray:
    """Image ``index`` as [3, 32, 32] uint8: distinct per channel, row, column, and its index in two pixels."""
    c, h, w = np.meshgrid(np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    image = ((c * 80 + h * 7 + w * 3 + index * 11) % 256).astype(np.uint8)
    image[0, 0, 0], image[1, 0, 0] = index // 256, index % 256
    return image


def index_of(images: torch.Tensor) -> torch.Tensor:
    """The image indices that ``pattern`` wrote into pixels (0, 0, 0) and (1, 0, 0)."""
    return images[:, 0, 0, 0].long() * 256 + images[:, 1, 0, 0].long()


def cifar_rows(indices) -> np.ndarray:
    """CIFAR's row format: per image 1024 red, then 1024 green, then 1024 blue bytes, each plane row-major."""
    return np.stack([pattern(i).reshape(3072) for i in indices])


def write_cifar10(root: Path, per_batch: int = 20, test: int = 20) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for b in range(5):
        idx = range(b * per_batch, (b + 1) * per_batch)
        entry = {"batch_label": f"training batch {b + 1} of 5", "labels": [i % 10 for i in idx]}
        entry.update(data=cifar_rows(idx), filenames=[f"img_{i}.png" for i in idx])
        _dump_py2(entry, folder / f"data_batch_{b + 1}")
    idx = range(5 * per_batch, 5 * per_batch + test)
    _dump_py2(
        {"batch_label": "testing batch 1 of 1", "labels": [i % 10 for i in idx], "data": cifar_rows(idx)},
        folder / "test_batch",
    )
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _dump_py2({"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072}, folder / "batches.meta")


def write_cifar100(root: Path, train: int = 100, test: int = 20) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, idx in (("train", range(train)), ("test", range(train, train + test))):
        entry = {"data": cifar_rows(idx), "fine_labels": [i % 100 for i in idx], "coarse_labels": [i % 20 for i in idx]}
        _dump_py2(entry, folder / name)
    _dump_py2(
        {"fine_label_names": [f"fine{i}" for i in range(100)], "coarse_label_names": [f"c{i}" for i in range(20)]},
        folder / "meta",
    )


SVHN_SIZES = {"train": 40, "extra": 60, "test": 20}


def svhn_first_index(split: str) -> int:
    return {"train": 0, "extra": SVHN_SIZES["train"], "test": SVHN_SIZES["train"] + SVHN_SIZES["extra"]}[split]


def write_svhn(root: Path, splits=("train", "extra", "test")) -> None:
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    for split in splits:
        first = svhn_first_index(split)
        idx = range(first, first + SVHN_SIZES[split])
        X = np.stack([pattern(i).transpose(1, 2, 0) for i in idx], axis=-1)  # [32, 32, 3, N]: h, w, c, n
        y = np.array([[i % 10 or 10] for i in idx], dtype=np.uint8)  # SVHN writes the digit 0 as 10
        savemat(root / f"{split}_32x32.mat", {"X": X, "y": y})


@pytest.fixture
def skip_md5(monkeypatch):
    import torchvision.datasets.cifar as cifar
    import torchvision.datasets.svhn as svhn

    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)
    monkeypatch.setattr(svhn, "check_integrity", lambda *args, **kwargs: True)


def expected(indices: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.stack([pattern(int(i)) for i in indices]))


# ------------------------------------------------------------------------------------------- loading


def test_fake_cifar_files_are_python2_pickles(tmp_path):
    write_cifar10(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        entry = pickle.load(f, encoding="bytes")
    assert b"data" in entry and b"labels" in entry
    assert entry[b"data"].dtype == np.uint8 and entry[b"data"].shape == (20, 3072)


def check_train_val(data, n_train_files: int, label_of) -> None:
    """Train and validation are disjoint, cover every training image once, and keep pixels and labels."""
    train_idx, val_idx = index_of(data.train.images), index_of(data.val.images)
    assert len(data.val) == 16 and len(data.train) == n_train_files - 16
    assert set(train_idx.tolist()).isdisjoint(val_idx.tolist())
    assert sorted(train_idx.tolist() + val_idx.tolist()) == list(range(n_train_files))
    for split, idx in ((data.train, train_idx), (data.val, val_idx)):
        assert split.images.dtype == torch.uint8 and split.images.shape[1:] == (3, 32, 32)
        assert torch.equal(split.images, expected(idx))
        assert split.labels.dtype == torch.int64 and split.labels.tolist() == [label_of(int(i)) for i in idx]


def test_cifar10_round_trips_pixels_and_labels(tmp_path, skip_md5):
    write_cifar10(tmp_path)
    data = load_dataset(DataConfig(name="cifar10", root=str(tmp_path), val_size=16))
    assert data.num_classes == 10 and data.augment == "crop_flip"
    check_train_val(data, 100, lambda i: i % 10)
    assert torch.equal(data.test.images, expected(range(100, 120)))  # test split: file order, untouched
    assert data.test.labels.tolist() == [i % 10 for i in range(100, 120)]


def test_cifar100_uses_fine_labels(tmp_path, skip_md5):
    write_cifar100(tmp_path)
    data = load_dataset(DataConfig(name="cifar100", root=str(tmp_path), val_size=16))
    assert data.num_classes == 100
    check_train_val(data, 100, lambda i: i % 100)
    assert data.test.labels.tolist() == [i % 100 for i in range(100, 120)]


def test_svhn_trains_on_train_plus_extra_and_maps_10_to_0(tmp_path, skip_md5):
    write_svhn(tmp_path)
    data = load_dataset(DataConfig(name="svhn", root=str(tmp_path), val_size=16))
    assert data.num_classes == 10 and data.augment == "none"
    n_train = SVHN_SIZES["train"] + SVHN_SIZES["extra"]
    check_train_val(data, n_train, lambda i: i % 10)
    assert 0 in data.train.labels.tolist() and data.train.labels.max() <= 9
    test_idx = range(n_train, n_train + SVHN_SIZES["test"])
    assert torch.equal(data.test.images, expected(test_idx)) and data.test.labels.tolist() == [i % 10 for i in test_idx]


def test_mean_and_std_are_those_of_the_training_split(tmp_path, skip_md5):
    write_cifar10(tmp_path)
    data = load_dataset(DataConfig(name="cifar10", root=str(tmp_path), val_size=16))
    pixels = data.train.images.double()
    assert data.mean == pytest.approx(pixels.mean(dim=(0, 2, 3)).tolist(), rel=1e-9)
    assert data.std == pytest.approx(pixels.std(dim=(0, 2, 3)).tolist(), rel=1e-9)
    # chunking must not change the figures
    chunked_mean, chunked_std = channel_mean_std(data.train.images, chunk=7)
    assert chunked_mean == pytest.approx(data.mean, rel=1e-12) and chunked_std == pytest.approx(data.std, rel=1e-12)


@pytest.mark.parametrize(
    "name, write, missing, folder_part",
    [
        ("cifar100", write_cifar100, ["train", "test", "meta"], "cifar-100-python"),
        ("svhn", lambda root: write_svhn(root, ("train", "test")), ["extra_32x32.mat"], ""),
    ],
)
def test_missing_files_are_named_with_their_folder_and_source(tmp_path, name, write, missing, folder_part):
    root = tmp_path / "data"
    if name == "svhn":
        write(root)
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(name=name, root=str(root)))
    text = str(err.value)
    for f in missing:
        assert f in text
    assert str(root / folder_part) in text and "data.download=true" in text
    assert "http" in text  # where to get the files
    if name == "svhn":
        assert "train_32x32.mat" not in text.split("under")[0]  # only the missing file is listed as missing


def test_files_failing_the_checksum_are_reported_not_loaded(tmp_path):
    write_cifar10(tmp_path)  # right names, wrong md5 (no patch here: the product's check is live)
    with pytest.raises(DataError, match="checksum"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path), val_size=16))


def test_missing_dataset_through_the_cli_exits_2_without_traceback(tmp_path):
    root = tmp_path / "data"
    write_svhn(root, ("train", "test"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "cgap_triton", "recipe", str(ROOT / "recipes" / "vgg19_svhn.toml")]
        + [f'data.root="{root}"', "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "extra_32x32.mat" in result.stderr and str(root) in result.stderr
    assert "http://ufldl.stanford.edu/housenumbers/extra_32x32.mat" in result.stderr
    assert not (tmp_path / "run").exists()


# -------------------------------------------------------------------------------------- augmentation


def random_split(n: int = 64, seed: int = 1) -> Split:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(1, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)  # no zeros: padding shows
    return Split(images, torch.arange(n))


def raw_batches(split: Split, augment: str, **kwargs) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batches with mean 0 and std 1, so the pipeline's floats are the augmented pixel values."""
    batches = Batches(split, 16, (0.0,) * 3, (1.0,) * 3, augment=augment, **kwargs)
    return list(batches.epoch(0))


def shifted_versions(image: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """All (2·pad+1)² crops of the zero-padded image: [81, C, H, W]."""
    padded = torch.nn.functional.pad(image, (pad, pad, pad, pad))
    h, w = image.shape[-2:]
    windows = padded.unfold(1, h, 1).unfold(2, w, 1)  # [C, dy, dx, H, W]
    return windows.permute(1, 2, 0, 3, 4).reshape(-1, image.shape[0], h, w)


def test_crop_is_one_of_the_81_shifts_of_its_image():
    split = random_split()
    seen = set()
    for images, labels in raw_batches(split, "crop", shuffle=True, seed=3):
        for image, label in zip(images, labels):
            candidates = shifted_versions(split.images[label].float())
            matches = (candidates == image).flatten(1).all(1).nonzero().flatten().tolist()
            assert len(matches) == 1, f"image {int(label)}: not a padded shift of its source"
            seen.add(matches[0])
    assert len(seen) >= 20  # offsets are actually drawn, across the whole 9×9 range
    assert min(seen) // 9 == 0 or max(seen) // 9 == 8


def test_flip_flips_about_half_of_the_images():
    split = random_split()
    batches = Batches(split, 16, (0.0,) * 3, (1.0,) * 3, augment="crop_flip", pad=0)
    flipped = 0
    for images, labels in batches.epoch(0):
        for image, label in zip(images, labels):
            source = split.images[label].float()
            assert torch.equal(image, source) or torch.equal(image, source.flip(-1))
            flipped += torch.equal(image, source.flip(-1))
    assert 16 <= flipped <= 48  # 64 fair coins


def test_crop_and_flip_together_stay_within_the_padded_image():
    split = random_split()
    for images, labels in raw_batches(split, "crop_flip", shuffle=True):
        for image, label in zip(images, labels):
            source = split.images[label].float()
            candidates = torch.cat([shifted_versions(source), shifted_versions(source.flip(-1))])
            assert (candidates == image).flatten(1).all(1).any()


def test_normalised_training_set_has_zero_mean_and_unit_std(tmp_path, skip_md5):
    write_cifar10(tmp_path)
    data = load_dataset(DataConfig(name="cifar10", root=str(tmp_path), val_size=16))
    batches = Batches(data.train, 10, data.mean, data.std)
    images = torch.cat([x for x, _ in batches])
    assert images.shape == (len(data.train), 3, 32, 32) and images.dtype == torch.float32
    assert images.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (images.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-4


def test_every_draw_depends_only_on_seed_epoch_and_batch():
    split = random_split(80)

    def epoch(seed, e, start=0):
        batches = Batches(split, 16, (0.0,) * 3, (1.0,) * 3, augment="crop_flip", shuffle=True, seed=seed)
        return list(batches.epoch(e, start=start))

    first = epoch(0, 2)
    torch.manual_seed(123)  # the global generator plays no part
    again = epoch(0, 2)
    resumed = epoch(0, 2, start=3)  # a run resumed after batch 3 of epoch 2
    assert len(first) == 5 and len(resumed) == 2
    for (x, y), (x2, y2) in zip(first, again):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    for (x, y), (x2, y2) in zip(first[3:], resumed):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    assert sorted(torch.cat([y for _, y in first]).tolist()) == list(range(80))  # each image once per epoch
    other_epoch, other_seed = epoch(0, 3), epoch(1, 2)
    assert not torch.equal(first[0][1], other_epoch[0][1]) and not torch.equal(first[0][1], other_seed[0][1])


def test_drop_last_and_channels_last():
    split = random_split(70)
    plain = Batches(split, 16, (10.0, 20.0, 30.0), (2.0, 3.0, 4.0), augment="crop_flip", shuffle=True)
    nhwc = Batches(
        split, 16, (10.0, 20.0, 30.0), (2.0, 3.0, 4.0), augment="crop_flip", shuffle=True, channels_last=True
    )
    assert len(plain) == 5 and len(Batches(split, 16, (0.0,) * 3, (1.0,) * 3, drop_last=True)) == 4
    for (x, y), (x2, y2) in zip(plain.epoch(1), nhwc.epoch(1)):
        assert x.is_contiguous() and x2.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(x, x2) and torch.equal(y, y2)


def test_shards_of_ranks_make_up_the_global_batch():
    """Each rank gathers and augments only its part; together they are the single-process batch."""
    import torch

    from cgap_triton.data import Batches, Split

    g = torch.Generator().manual_seed(1)
    split = Split(torch.randint(0, 256, (50, 3, 8, 8), generator=g, dtype=torch.uint8), torch.arange(50))
    kwargs = dict(augment="crop_flip", shuffle=True, drop_last=True, seed=3)
    whole = list(Batches(split, 8, (0.0,) * 3, (1.0,) * 3, **kwargs).epoch(2))
    shards = [list(Batches(split, 8, (0.0,) * 3, (1.0,) * 3, shard=(r, 2), **kwargs).epoch(2)) for r in range(2)]
    for b, (x, y) in enumerate(whole):
        for r in range(2):
            assert torch.equal(shards[r][b][0], x[r::2]) and torch.equal(shards[r][b][1], y[r::2])

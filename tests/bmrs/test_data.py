"""Dataset loading from a local root: a fake IDX dataset written here, and the real Fashion-MNIST if installed."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from bmrs.data import DATASETS, DataBundle, DatasetNotFoundError, Split, load_dataset

REAL_ROOT = Path("/usr/share/datasets/fashion-mnist")
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
NUM_TRAIN, NUM_TEST = 20, 8


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX: magic 0x0000 08 <ndim> (unsigned byte data), then each dimension as a big-endian int32."""
    magic = 0x00000800 | array.ndim  # 0x00000803 for images, 0x00000801 for labels
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def fake_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    train = rng.integers(0, 256, size=(NUM_TRAIN, 28, 28), dtype=np.uint8)
    train[:, 0, 0] = np.arange(NUM_TRAIN)  # identifies each image after the shuffle
    test = rng.integers(0, 256, size=(NUM_TEST, 28, 28), dtype=np.uint8)
    return {
        FILES[0]: train,
        FILES[1]: (np.arange(NUM_TRAIN) % 10).astype(np.uint8),
        FILES[2]: test,
        FILES[3]: (np.arange(NUM_TEST) * 3 % 10).astype(np.uint8),
    }


def write_flat(folder: Path, arrays: dict[str, np.ndarray], *, compress: bool = True, skip: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        if name == skip:
            continue
        if compress:
            with gzip.open(folder / f"{name}.gz", "wb") as handle:
                handle.write(idx_bytes(array))
        else:
            (folder / name).write_bytes(idx_bytes(array))
    return folder


def check_fake_bundle(bundle: DataBundle, arrays, num_val: int) -> None:
    assert isinstance(bundle, DataBundle)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (NUM_TRAIN - num_val, num_val, NUM_TEST)
    assert bundle.num_classes == 10 and bundle.input_shape == (1, 28, 28)
    for split in (bundle.train, bundle.val, bundle.test):
        assert split.images.dtype == torch.float32 and split.labels.dtype == torch.int64
    # The test split keeps its stored order and exact pixel values.
    assert torch.equal(bundle.test.images[:, 0], torch.from_numpy(arrays[FILES[2]]).float() / 255.0)
    assert bundle.test.labels.tolist() == arrays[FILES[3]].tolist()
    # Train and validation partition the training set, each image with its own label.
    ids = torch.cat([bundle.train.images, bundle.val.images])[:, 0, 0, 0].mul(255).round().long()
    labels = torch.cat([bundle.train.labels, bundle.val.labels])
    assert sorted(ids.tolist()) == list(range(NUM_TRAIN))
    assert torch.equal(labels, ids % 10)
    originals = torch.from_numpy(arrays[FILES[0]]).float() / 255.0
    assert torch.equal(torch.cat([bundle.train.images, bundle.val.images])[:, 0], originals[ids])


@pytest.mark.parametrize("name", ["fashion_mnist", "mnist"])
def test_flat_gz_folder_is_staged(tmp_path, name):
    arrays = fake_arrays()
    root = write_flat(tmp_path / "flat", arrays)
    cache = tmp_path / "cache"
    bundle = load_dataset(name, root, val_fraction=0.25, seed=3, cache_dir=cache)
    check_fake_bundle(bundle, arrays, num_val=5)
    folder = "FashionMNIST" if name == "fashion_mnist" else "MNIST"
    raw = cache / "datasets" / name / folder / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(FILES), "only complete files, no partial leftovers"
    # Loading again reuses the staged copy and gives the same split.
    again = load_dataset(name, root, val_fraction=0.25, seed=3, cache_dir=cache)
    assert torch.equal(again.val.images, bundle.val.images) and torch.equal(again.train.labels, bundle.train.labels)
    other = load_dataset(name, root, val_fraction=0.25, seed=4, cache_dir=cache)
    assert not torch.equal(other.val.images, bundle.val.images)


def test_flat_plain_folder(tmp_path):
    arrays = fake_arrays(1)
    root = write_flat(tmp_path / "flat", arrays, compress=False)
    check_fake_bundle(load_dataset("fashion_mnist", root, val_fraction=0.5, cache_dir=tmp_path / "cache"), arrays, 10)


def test_torchvision_layout_is_read_in_place(tmp_path):
    arrays = fake_arrays(2)
    write_flat(tmp_path / "root" / "FashionMNIST" / "raw", arrays, compress=False)
    cache = tmp_path / "cache"
    bundle = load_dataset("fashion_mnist", tmp_path / "root", val_fraction=0.25, cache_dir=cache)
    check_fake_bundle(bundle, arrays, 5)
    assert not cache.exists()


def test_missing_file_names_it(tmp_path):
    root = write_flat(tmp_path / "flat", fake_arrays(), skip=FILES[3])
    with pytest.raises(DatasetNotFoundError, match=FILES[3]) as info:
        load_dataset("fashion_mnist", root, cache_dir=tmp_path / "cache")
    assert "apt-get install -y dataset-fashion-mnist" in str(info.value)


def test_missing_root(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion_mnist", tmp_path / "nowhere", cache_dir=tmp_path / "cache")
    assert isinstance(info.value, ValueError)
    assert "apt-get install -y dataset-fashion-mnist" in str(info.value)
    assert str(tmp_path / "nowhere") in str(info.value)
    with pytest.raises(DatasetNotFoundError):
        load_dataset("cifar10", tmp_path, cache_dir=tmp_path / "cache")  # no cifar-10-batches-py


def test_bad_arguments(tmp_path):
    assert {"fashion_mnist", "mnist", "cifar10"} <= set(DATASETS)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet", tmp_path)
    root = write_flat(tmp_path / "flat", fake_arrays())
    for fraction in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError):
            load_dataset("fashion_mnist", root, val_fraction=fraction, cache_dir=tmp_path / "cache")


def test_split_batches():
    split = Split(torch.arange(10, dtype=torch.float32).view(10, 1, 1, 1), torch.arange(10))
    ordered = list(split.batches(4))
    assert [len(labels) for _, labels in ordered] == [4, 4, 2]
    assert torch.equal(torch.cat([labels for _, labels in ordered]), torch.arange(10))
    shuffled = torch.cat([labels for _, labels in split.batches(3, generator=torch.Generator().manual_seed(0))])
    assert sorted(shuffled.tolist()) == list(range(10)) and not torch.equal(shuffled, torch.arange(10))
    for images, labels in split.batches(3, generator=torch.Generator().manual_seed(0)):
        assert torch.equal(images.flatten().long(), labels)


@pytest.fixture(scope="module")
def real_cache(tmp_path_factory) -> Path:
    if not REAL_ROOT.is_dir():
        pytest.skip(f"{REAL_ROOT} is absent: install it with `apt-get install -y dataset-fashion-mnist`")
    return tmp_path_factory.mktemp("real-cache")


def test_real_fashion_mnist(real_cache):
    bundle = load_dataset("fashion_mnist", REAL_ROOT, cache_dir=real_cache)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (48000, 12000, 10000)
    assert bundle.num_classes == 10 and bundle.input_shape == (1, 28, 28)
    for split in (bundle.train, bundle.val, bundle.test):
        assert split.images.dtype == torch.float32
        assert float(split.images.min()) == 0.0 and float(split.images.max()) == 1.0
        assert sorted(split.labels.unique().tolist()) == list(range(10))
    assert torch.bincount(bundle.test.labels).tolist() == [1000] * 10  # Fashion-MNIST's balanced test set
    assert torch.bincount(torch.cat([bundle.train.labels, bundle.val.labels])).tolist() == [6000] * 10
    # deterministic for a seed, different for another
    again = load_dataset("fashion_mnist", REAL_ROOT, cache_dir=real_cache)
    assert torch.equal(again.val.labels, bundle.val.labels) and torch.equal(again.val.images[:500], bundle.val.images[:500])
    other = load_dataset("fashion_mnist", REAL_ROOT, seed=1, cache_dir=real_cache)
    assert not torch.equal(other.val.labels, bundle.val.labels)

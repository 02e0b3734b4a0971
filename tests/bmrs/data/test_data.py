"""Dataset loading from a local root: a fake IDX dataset written here, and the real Fashion-MNIST if installed."""
from __future__ import annotations

import gzip
import json
import os
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
    (staged,) = (cache / "datasets" / name).iterdir()  # one copy, in a folder named by its source's identity
    raw = staged / folder / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(FILES), "only complete files, no partial leftovers"
    source = json.loads((staged / "source.json").read_text())["path_size_mtime_ns_inode"]
    assert [Path(row[0]).name for row in source] == [f"{file}.gz" for file in FILES]
    # Loading again reuses the staged copy, untouched, and gives the same split.
    before = staged_files(cache)
    again = load_dataset(name, root, val_fraction=0.25, seed=3, cache_dir=cache)
    assert staged_files(cache) == before
    assert torch.equal(again.val.images, bundle.val.images) and torch.equal(again.train.labels, bundle.train.labels)
    other = load_dataset(name, root, val_fraction=0.25, seed=4, cache_dir=cache)
    assert not torch.equal(other.val.images, bundle.val.images)


def staged_files(cache: Path) -> dict[Path, tuple[int, int]]:
    """Every staged file with its inode and modification time: a re-staged file gets new ones."""
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (cache / "datasets").rglob("*") if p.is_file()}


def test_the_cache_never_stands_in_for_the_named_root(tmp_path):
    cache = tmp_path / "cache"
    first = write_flat(tmp_path / "first", fake_arrays(0))
    load_dataset("fashion_mnist", first, cache_dir=cache)  # a staged copy now exists
    (tmp_path / "empty").mkdir()
    (tmp_path / "unrelated").mkdir()
    (tmp_path / "unrelated" / "notes.txt").write_text("not a dataset")
    for root in (tmp_path / "empty", tmp_path / "unrelated"):
        with pytest.raises(DatasetNotFoundError) as info:
            load_dataset("fashion_mnist", root, cache_dir=cache)
        message = str(info.value)
        assert str(root) in message and all(file in message for file in FILES) and "apt-get install" in message
        assert "\n" not in message
    with pytest.raises(DatasetNotFoundError, match="empty string.*or leave it unset .null. for the default"):
        load_dataset("fashion_mnist", "", cache_dir=cache)
    with pytest.raises(DatasetNotFoundError, match="empty string; set data.root to an .npz file"):
        load_dataset("npz", "  ", cache_dir=cache)


def test_the_cache_is_keyed_by_the_source_files(tmp_path):
    cache = tmp_path / "cache"
    old, new = fake_arrays(0), fake_arrays(5)
    first = write_flat(tmp_path / "first", old)
    second = write_flat(tmp_path / "second", new)

    def test_images(root: Path) -> torch.Tensor:
        return load_dataset("fashion_mnist", root, cache_dir=cache).test.images[:, 0]

    assert torch.equal(test_images(first), torch.from_numpy(old[FILES[2]]) / 255.0)
    # Another root holding files of the same names is another source.
    assert torch.equal(test_images(second), torch.from_numpy(new[FILES[2]]) / 255.0)
    assert len(list((cache / "datasets" / "fashion_mnist").iterdir())) == 2
    # The first root's files rewritten in place: the new data is read, not the copy staged before.
    write_flat(first, new)
    for file in FILES:
        status = (first / f"{file}.gz").stat()  # a later modification time even on a coarse-grained clock
        os.utime(first / f"{file}.gz", ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))
    assert torch.equal(test_images(first), torch.from_numpy(new[FILES[2]]) / 255.0)


@pytest.mark.parametrize("bad", ["file", "under_file", "empty"])
def test_a_cache_dir_that_cannot_be_a_folder_is_refused_before_anything_is_written(tmp_path, bad):
    root = write_flat(tmp_path / "flat", fake_arrays())
    (tmp_path / "a_file").write_text("keep me")
    cache_dir = {"file": tmp_path / "a_file", "under_file": tmp_path / "a_file" / "cache", "empty": ""}[bad]
    before = sorted(tmp_path.rglob("*"))
    for name, data_root in (("fashion_mnist", root), ("npz", tmp_path / "absent.npz")):  # checked whatever the dataset
        with pytest.raises(ValueError, match=r"data.cache_dir.*set data.cache_dir to a writable folder") as info:
            load_dataset(name, data_root, cache_dir=cache_dir)
        assert not isinstance(info.value, DatasetNotFoundError)
    assert sorted(tmp_path.rglob("*")) == before and (tmp_path / "a_file").read_text() == "keep me"


def test_a_damaged_idx_file_names_itself(tmp_path):
    root = write_flat(tmp_path / "flat", fake_arrays())
    (root / f"{FILES[1]}.gz").write_bytes((root / f"{FILES[1]}.gz").read_bytes()[:30])  # a cut-off download
    with pytest.raises(DatasetNotFoundError, match=rf"{FILES[1]}.gz' cannot be read.*replace it with a complete copy"):
        load_dataset("fashion_mnist", root, cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob(FILES[1])), "nothing half-staged"
    plain = write_flat(tmp_path / "plain", fake_arrays(), compress=False)
    (plain / FILES[2]).write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 3)  # a header cut short
    with pytest.raises(DatasetNotFoundError, match=r"t10k-\*-ubyte files .* are not valid IDX files"):
        load_dataset("fashion_mnist", plain, cache_dir=tmp_path / "cache")


def idx_labelled(tmp_path: Path, **changes: np.ndarray) -> Path:
    arrays = fake_arrays()
    arrays.update({FILES[{"train_labels": 1, "test_images": 2, "test_labels": 3}[key]]: value for key, value in changes.items()})
    return write_flat(tmp_path / "flat", arrays)


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"train_labels": np.full(NUM_TRAIN, 4)}, "every training example has the label 4; a classifier needs at least"),
        ({"train_labels": np.arange(NUM_TRAIN) % 10 + 3}, "the training split has the label 12, outside the 10 classes 0..9"),
        ({"test_labels": np.full(NUM_TEST, 200)}, "the test split has the label 200, outside the 10 classes 0..9"),
        ({"train_labels": np.arange(NUM_TRAIN) % 5}, "the test split has the labels [5, 6, 8, 9], which no training example has"),
        ({"test_labels": np.zeros(NUM_TEST - 1)}, f"the test split has {NUM_TEST} images but {NUM_TEST - 1} labels"),
    ],
)
def test_idx_labels_a_classifier_cannot_use_are_refused(tmp_path, changes, fragment):
    with pytest.raises(ValueError) as info:
        load_dataset("fashion_mnist", idx_labelled(tmp_path, **changes), cache_dir=tmp_path / "cache")
    assert fragment in str(info.value) and str(tmp_path / "flat") in str(info.value)


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
    staged = staged_files(real_cache)
    assert len({path.parents[2] for path in staged if path.name in FILES}) == 1  # one copy, keyed by the source
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
    assert staged_files(real_cache) == staged, "the second load reads the staged copy, staging nothing again"
    assert torch.equal(again.val.labels, bundle.val.labels) and torch.equal(again.val.images[:500], bundle.val.images[:500])
    other = load_dataset("fashion_mnist", REAL_ROOT, seed=1, cache_dir=real_cache)
    assert not torch.equal(other.val.labels, bundle.val.labels)


# ------------------------------------------------------------------ the user's own data: image_folder


def write_png(path: Path, value: int, *, size=(8, 6), mode="L") -> None:
    """A PIL image whose pixels all equal ``value`` (each channel), ``size`` as (width, height)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    colour = value if mode == "L" else (value, value, value)
    Image.new(mode, size, colour).save(path)


def write_class_tree(root: Path, counts: dict[str, int], *, start: int = 0) -> dict[int, str]:
    """``counts[c]`` images per class folder; pixel value = a unique id (start, start+1, ...) -> class."""
    owner = {}
    value = start
    for name, count in counts.items():
        for index in range(count):
            write_png(root / name / f"{index:03d}.png", value)
            owner[value] = name
            value += 1
    return owner


def pixel_ids(split: Split) -> list[int]:
    return split.images[:, 0, 0, 0].mul(255).round().long().tolist()


def test_image_folder_single_tree_holds_out_a_seeded_test_split(tmp_path):
    owner = write_class_tree(tmp_path / "images", {"cat": 5, "dog": 5, "emu": 5})
    bundle = load_dataset("image_folder", tmp_path / "images", val_fraction=0.25, seed=0)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (9, 3, 3)
    assert bundle.num_classes == 3 and bundle.input_shape == (1, 6, 8)  # PNG 8 wide, 6 high
    classes = sorted(set(owner.values()))
    for split in (bundle.train, bundle.val, bundle.test):
        assert split.images.dtype == torch.float32 and split.labels.dtype == torch.int64
        assert float(split.images.min()) >= 0.0 and float(split.images.max()) <= 1.0
        assert [classes[label] for label in split.labels.tolist()] == [owner[i] for i in pixel_ids(split)]
    ids = pixel_ids(bundle.train) + pixel_ids(bundle.val) + pixel_ids(bundle.test)
    assert sorted(ids) == list(range(15))
    # The test split does not move with data.seed; the validation split does.
    other = load_dataset("image_folder", tmp_path / "images", val_fraction=0.25, seed=1)
    assert pixel_ids(other.test) == pixel_ids(bundle.test)
    assert pixel_ids(other.val) != pixel_ids(bundle.val)


def test_image_folder_train_test_layout_maps_test_labels_by_class_name(tmp_path):
    write_class_tree(tmp_path / "train", {"a": 4, "b": 4, "c": 4})
    write_class_tree(tmp_path / "test", {"b": 2, "c": 1}, start=100)  # no "a": test labels follow names
    write_png(tmp_path / "train" / "c" / "colour.png", 200, mode="RGB")  # one colour image: all become RGB
    bundle = load_dataset("image_folder", tmp_path, val_fraction=0.25)
    assert bundle.num_classes == 3 and bundle.input_shape == (3, 6, 8)
    assert len(bundle.train) + len(bundle.val) == 13 and len(bundle.test) == 3
    assert pixel_ids(bundle.test) == [100, 101, 102] and bundle.test.labels.tolist() == [1, 1, 2]
    # grey images read as RGB keep their value in every channel
    assert torch.equal(bundle.test.images[:, 0], bundle.test.images[:, 2])


def test_image_folder_errors_name_the_file_and_the_fix(tmp_path):
    write_class_tree(tmp_path / "sizes", {"a": 2, "b": 2})
    write_png(tmp_path / "sizes" / "b" / "big.png", 9, size=(9, 6))
    with pytest.raises(ValueError, match=r"big\.png is 9x6 pixels.*resize them beforehand"):
        load_dataset("image_folder", tmp_path / "sizes")

    write_class_tree(tmp_path / "half" / "train", {"a": 2})
    with pytest.raises(DatasetNotFoundError, match=r"has a train/ folder but no test/ folder"):
        load_dataset("image_folder", tmp_path / "half")

    write_class_tree(tmp_path / "extra" / "train", {"a": 3})
    write_class_tree(tmp_path / "extra" / "test", {"a": 1, "zebra": 1})
    with pytest.raises(ValueError, match=r"classes \['zebra'\].*lacks"):
        load_dataset("image_folder", tmp_path / "extra")

    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match=r"class folders of images"):
        load_dataset("image_folder", tmp_path / "empty")

    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("image_folder", tmp_path / "absent")
    assert str(tmp_path / "absent") in str(info.value) and "<root>/<class>/*.png" in str(info.value)


def damage_png(path: Path, how: str) -> None:
    """``cut``: the file ends inside its pixel data (a sound header: PIL fails only when decoding);
    ``garbage``: no image at all."""
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"IDAT") + 12] if how == "cut" else b"not a png" * 10)


@pytest.mark.parametrize("how", ["cut", "garbage"])
def test_image_folder_damaged_image_names_the_file(tmp_path, how):
    from PIL import Image

    write_class_tree(tmp_path / "images", {"a": 3, "b": 3})
    # Noise compresses badly, so the cut lands inside the pixel data.
    noise = np.random.default_rng(0).integers(0, 256, size=(6, 8), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "images" / "b" / "bad.png")
    damage_png(tmp_path / "images" / "b" / "bad.png", how)
    with pytest.raises(ValueError) as info:
        load_dataset("image_folder", tmp_path / "images")
    message = str(info.value)
    assert f"{tmp_path / 'images' / 'b' / 'bad.png'} is not a readable image" in message
    assert "re-save it or remove it from the folder" in message and "\n" not in message


def test_image_folder_with_one_class_is_refused(tmp_path):
    write_class_tree(tmp_path / "one", {"only": 6})
    with pytest.raises(ValueError, match="every training example has the label 0; a classifier needs at least two classes"):
        load_dataset("image_folder", tmp_path / "one", val_fraction=0.5)


# ------------------------------------------------------------------------- the user's own data: npz


def labelled(count: int, shape=(5, 4), dtype=np.uint8, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    x = np.zeros((count, *shape), dtype=dtype)
    x.reshape(count, -1)[:, 0] = np.arange(count)  # identifies each example
    return x, (np.arange(count) % classes).astype(np.int64)


def test_npz_single_file_holds_out_a_test_split(tmp_path):
    x, y = labelled(10)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    for root in (tmp_path / "data.npz", tmp_path):  # the file, or the folder holding only it
        bundle = load_dataset("npz", root, val_fraction=0.25)
        assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (6, 2, 2)
        assert bundle.input_shape == (1, 5, 4) and bundle.num_classes == 3
        ids = pixel_ids(bundle.train) + pixel_ids(bundle.val) + pixel_ids(bundle.test)
        assert sorted(ids) == list(range(10))
        for split in (bundle.train, bundle.val, bundle.test):
            assert split.labels.tolist() == [i % 3 for i in pixel_ids(split)]


def test_npz_test_arrays_layouts_and_scaling(tmp_path):
    x, y = labelled(8, shape=(6, 6, 3))  # channels last
    x_test, _ = labelled(4, shape=(6, 6, 3))
    y_test = np.array([2, 0, 1, 2])
    np.savez(tmp_path / "nhwc.npz", x=x, y=y, x_test=x_test, y_test=y_test)
    bundle = load_dataset("npz", tmp_path / "nhwc.npz", val_fraction=0.25)
    assert bundle.input_shape == (3, 6, 6) and len(bundle.test) == 4 and bundle.num_classes == 3
    assert torch.equal(bundle.test.images, torch.from_numpy(x_test).permute(0, 3, 1, 2).float() / 255.0)

    floats = np.random.default_rng(0).uniform(-1.0, 1.0, size=(8, 2, 5, 5)).astype(np.float64)  # channels first
    np.savez(tmp_path / "float.npz", x=floats, y=y, classes=np.array(["a", "b", "c", "d"]))
    bundle = load_dataset("npz", tmp_path / "float.npz", val_fraction=0.25)
    assert bundle.input_shape == (2, 5, 5) and bundle.num_classes == 4  # classes, not max(y) + 1
    assert float(bundle.test.images.min()) < 0.0  # floats are kept as they are

    square = np.zeros((8, 3, 5, 3), dtype=np.uint8)  # axis 1 and 3 both 3: only layout can tell
    np.savez(tmp_path / "square.npz", x=square, y=y)
    with pytest.raises(ValueError, match="layout='NCHW' or layout='NHWC'"):
        load_dataset("npz", tmp_path / "square.npz")
    np.savez(tmp_path / "square.npz", x=square, y=y, layout="NHWC")
    assert load_dataset("npz", tmp_path / "square.npz").input_shape == (3, 3, 5)

    split = tmp_path / "split"
    split.mkdir()
    np.savez(split / "train.npz", x=x, y=y)
    np.savez(split / "test.npz", x=x_test, y=y_test)
    bundle = load_dataset("npz", split, val_fraction=0.25)
    assert len(bundle.train) + len(bundle.val) == 8 and len(bundle.test) == 4 and bundle.num_classes == 3


@pytest.mark.parametrize(
    "arrays, fragment",
    [
        ({"x": np.zeros((4, 3, 3), np.uint8)}, "no array y (it has ['x'])"),
        ({"images": np.zeros((4, 3, 3), np.uint8), "labels": np.zeros(4, np.int64)}, "no array x or y"),
        ({"x": np.zeros((4, 3, 3), np.uint8), "y": np.zeros(5, np.int64)}, "5 labels for 4 images"),
        ({"x": np.zeros((4, 3, 3), np.uint8), "y": np.zeros(4, np.float32)}, "save y.astype(np.int64)"),
        ({"x": np.zeros((4, 3, 3), np.uint8), "y": np.zeros((4, 2), np.int64)}, "save y.argmax(1)"),
        ({"x": np.zeros((4, 3, 3), np.uint8), "y": -np.ones(4, np.int64)}, "negative label"),
        ({"x": np.zeros((4, 9), np.uint8), "y": np.zeros(4, np.int64)}, "images must be (N, H, W)"),
        ({"x": np.zeros((4, 3, 3), np.float32) + 255.0, "y": np.zeros(4, np.int64)}, "save 0-255 pixels as uint8"),
        ({"x": np.full((4, 3, 3), np.nan, np.float32), "y": np.zeros(4, np.int64)}, "NaN or infinite"),
        ({"x": np.full((4, 3, 3), 300, np.int32), "y": np.zeros(4, np.int64)}, "integer images must be 0-255"),
        ({"x": np.zeros((4, 3, 3), bool), "y": np.zeros(4, np.int64)}, "uint8 pixels or floats"),
        ({"x": np.zeros((4, 3, 3), np.uint8), "y": np.zeros(4, np.int64), "x_test": np.zeros((2, 3, 3))}, "no array y_test"),
        ({"x": np.zeros((4, 3, 3), np.uint8), "y": np.zeros(4, np.int64), "x_test": np.zeros((2, 3, 4)), "y_test": np.zeros(2, np.int64)}, "save both splits at one size"),  # fmt: skip
        ({"x": np.zeros((5, 3, 3), np.uint8), "y": np.array([0, 1, 2, 3, 0]), "classes": np.array(["a", "b"])}, "names 2 classes but has the label 3"),  # fmt: skip
        ({"x": np.zeros((4, 3, 3), np.uint8), "y": np.array([0, 1, 0, 1], dtype=object)}, "holds Python objects, not plain arrays"),
        # Labels a classifier cannot be trained or fairly tested on.
        ({"x": np.zeros((6, 3, 3), np.uint8), "y": np.zeros(6, np.int64)}, "every training example has the label 0"),
        ({"x": np.zeros((6, 3, 3), np.uint8), "y": np.ones(6, np.int64), "classes": np.array(["a", "b"])}, "every training example has the label 1"),  # fmt: skip
        ({"x": np.zeros((4, 3, 3), np.uint8), "y": np.array([0, 1, 0, 1]), "x_test": np.zeros((2, 3, 3), np.uint8), "y_test": np.array([1, 2])}, "the test split has the labels [2], which no training example has"),  # fmt: skip
        ({"x": np.zeros((4, 3, 3), np.uint8), "y": np.array([0, 1, 0, 1]), "x_test": np.zeros((2, 3, 3), np.uint8), "y_test": np.array([0.0, 1.0])}, "array 'y_test' has dtype float64"),  # fmt: skip
        ({"x": np.zeros((4, 3, 3), np.uint8), "y": np.array([0, 1, 0, 1]), "x_test": np.zeros((3, 3, 3), np.uint8), "y_test": np.array([0, 1])}, "2 labels for 3 images"),  # fmt: skip
    ],
)
def test_npz_errors_name_the_fix(tmp_path, arrays, fragment):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError) as info:
        load_dataset("npz", tmp_path / "bad.npz", val_fraction=0.5)
    assert fragment in str(info.value)
    assert "allow_pickle" not in str(info.value)  # numpy's advice would let a data file run code


def test_npz_roots(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("npz", tmp_path / "absent.npz")
    assert str(tmp_path / "absent.npz") in str(info.value) and "arrays x (images) and y" in str(info.value)
    with pytest.raises(DatasetNotFoundError, match="holds no .npz file"):
        load_dataset("npz", tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DatasetNotFoundError, match="is not an .npz file"):
        load_dataset("npz", tmp_path / "notes.txt")
    with pytest.raises(DatasetNotFoundError, match="is not a folder"):
        load_dataset("fashion_mnist", tmp_path / "notes.txt")  # only npz takes a file as its root
    x, y = labelled(10)
    np.savez(tmp_path / "one.npz", x=x, y=y)
    np.savez(tmp_path / "two.npz", x=x, y=y)
    with pytest.raises(ValueError, match=r"holds \['one.npz', 'two.npz'\]; set data.root to one of them"):
        load_dataset("npz", tmp_path)
    with pytest.raises(ValueError, match="leaves an empty training or validation split"):
        load_dataset("npz", tmp_path / "one.npz", val_fraction=0.01)
    np.savez(tmp_path / "tiny.npz", x=x[:2], y=y[:2])
    with pytest.raises(ValueError, match="too few to hold out"):
        load_dataset("npz", tmp_path / "tiny.npz")

"""The user's own data: a folder of images (``image_folder``) or NumPy arrays (``npz``).

Both give the same ``Split`` tensors as the built-in datasets: float32 ``(N, C, H, W)``, int64
labels. Without a separate test set, a fixed 20% of the examples is held out as the test split.
Its seed is a constant, not ``data.seed``: changing the validation seed must not change which
examples a run is tested on, so runs with different seeds stay comparable.

``image_folder``: torchvision's ``ImageFolder`` layout, either
``<root>/train/<class>/*.png`` and ``<root>/test/<class>/*.png`` (a root with a ``train`` or
``test`` folder is always read this way, so it needs both), or one ``<root>/<class>/*.png`` tree
that the 20% test split is taken from. Class ``i`` is the ``i``-th class folder name in sorted
order (``ImageFolder``'s rule; a test tree may lack classes, its labels follow the names). All
images must share one size. Grayscale images stay one channel unless some image is in colour,
then all are read as RGB; an alpha channel is dropped.

``npz``: ``root`` is an ``.npz`` file, a folder holding exactly one, or a folder holding
``train.npz`` and ``test.npz``. Arrays: ``x`` (images, ``(N, H, W)``, ``(N, H, W, C)`` or
``(N, C, H, W)``) and ``y`` (integer labels ``(N,)``); optionally ``x_test`` and ``y_test``,
``classes`` (one name per class: ``num_classes`` is its length rather than ``max(y) + 1``) and
``layout`` (``"NCHW"`` or ``"NHWC"``, needed only when the channel axis cannot be told from the
shape: otherwise the smaller of axes 1 and 3 is taken as channels). Integer images are pixels in
``[0, 255]`` and are scaled by 1/255; float images are used as they are (``[0, 1]``, ``[-1, 1]`` or
standardised inputs) but must be finite and within ``[-10, 10]``: larger values are nearly always
0-255 pixels saved as floats, which train badly unscaled.
"""
from __future__ import annotations

import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from bmrs.data.registry import DatasetNotFoundError, Split, register_dataset

TEST_FRACTION = 0.2
TEST_SPLIT_SEED = 0
FLOAT_IMAGE_LIMIT = 10.0
_GRAY_MODES = {"1", "L", "LA"}

_IMAGE_FOLDER_EXPECTS = (
    "a folder of class folders of images, <root>/<class>/*.png (20% held out for testing), "
    "or <root>/train/<class>/*.png and <root>/test/<class>/*.png"
)
_NPZ_EXPECTS = (
    "an .npz file with arrays x (images) and y (integer labels), "
    "or a folder holding exactly one such file, or train.npz and test.npz"
)
_SAVE_HINT = "e.g. np.savez(path, x=images, y=labels)"


def _hold_out_test(images: Tensor, labels: Tensor, name: str) -> tuple[Split, Split]:
    count = len(labels)
    num_test = int(round(TEST_FRACTION * count))
    if not 0 < num_test < count:
        raise ValueError(f"{name}: {count} examples are too few to hold out a 20% test split; add more examples")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(TEST_SPLIT_SEED))
    # Sorted indices keep each split in stored order, so a split reads like the source data.
    test_index, train_index = order[:num_test].sort().values, order[num_test:].sort().values
    return Split(images[train_index], labels[train_index]), Split(images[test_index], labels[test_index])


# ---------------------------------------------------------------------------------------- images


def _image_folder_set(folder: Path):
    from torchvision.datasets import ImageFolder

    try:
        # Only the file list is used: images are decoded once, below, in one colour mode for all.
        return ImageFolder(str(folder))
    except FileNotFoundError as error:
        raise DatasetNotFoundError(f"image_folder: {error} Expected {_IMAGE_FOLDER_EXPECTS}") from error


def _read_images(paths: list[str]) -> Tensor:
    from torchvision.transforms import v2

    sizes, modes = [], []
    for path in paths:
        with _opened(path) as image:  # header only: sizes and modes are checked before decoding
            sizes.append(image.size)
            modes.append(image.mode)
    for path, size, mode in zip(paths, sizes, modes):
        if size != sizes[0]:
            raise ValueError(
                f"image_folder: {path} is {size[0]}x{size[1]} pixels but {paths[0]} is {sizes[0][0]}x{sizes[0][1]}; "
                "all images must share one size: resize them beforehand (e.g. with PIL's Image.resize)"
            )
        if mode.startswith("I") or mode == "F":
            raise ValueError(
                f"image_folder: {path} has 16/32-bit pixels (PIL mode {mode!r}); save it as 8-bit grayscale or RGB"
            )
    mode = "L" if all(m in _GRAY_MODES for m in modes) else "RGB"
    to_tensor = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    tensors = []
    for path in paths:
        with _opened(path) as image:
            try:
                pixels = image.convert(mode)
            except _IMAGE_ERRORS as error:  # a truncated file has a sound header and fails only here
                raise _unreadable(path, error) from error
        tensors.append(to_tensor(pixels))
    return torch.stack(tensors).as_subclass(Tensor)


# What PIL raises for a damaged file: OSError (truncated, unidentified), SyntaxError (a broken PNG
# chunk), the others from its decoders' sanity checks.
_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)


def _opened(path: str):
    from PIL import Image

    try:
        return Image.open(path)
    except _IMAGE_ERRORS as error:
        raise _unreadable(path, error) from error


def _unreadable(path: str, error: BaseException) -> ValueError:
    reason = " ".join(str(error).split()) or type(error).__name__
    return ValueError(f"image_folder: {path} is not a readable image ({reason}); re-save it or remove it from the folder")


@register_dataset("image_folder", None, expects=_IMAGE_FOLDER_EXPECTS)
def _image_folder(root: Path, cache: Path) -> tuple[Split, Split, int]:
    has_train, has_test = (root / "train").is_dir(), (root / "test").is_dir()
    if has_train != has_test:
        present, absent = ("train", "test") if has_train else ("test", "train")
        raise DatasetNotFoundError(
            f"image_folder: {str(root)!r} has a {present}/ folder but no {absent}/ folder; add {absent}/<class>/ "
            f"folders, or move the class folders up to {str(root)!r} to hold out 20% for testing"
        )
    if not has_train:
        full = _image_folder_set(root)
        images = _read_images([path for path, _ in full.samples])
        labels = torch.tensor(full.targets, dtype=torch.long)
        train, test = _hold_out_test(images, labels, "image_folder")
        return train, test, len(full.classes)
    train_set, test_set = _image_folder_set(root / "train"), _image_folder_set(root / "test")
    unknown = sorted(set(test_set.classes) - set(train_set.classes))
    if unknown:
        raise ValueError(
            f"image_folder: {str(root / 'test')!r} has classes {unknown} that {str(root / 'train')!r} lacks; "
            "every test class needs training images"
        )
    paths = [path for path, _ in train_set.samples + test_set.samples]
    images = _read_images(paths)
    num_train = len(train_set.samples)
    train_labels = torch.tensor(train_set.targets, dtype=torch.long)
    test_labels = torch.tensor([train_set.class_to_idx[test_set.classes[t]] for t in test_set.targets], dtype=torch.long)
    return Split(images[:num_train], train_labels), Split(images[num_train:], test_labels), len(train_set.classes)


# ------------------------------------------------------------------------------------------- npz


def _npz_files(root: Path) -> tuple[Path, Path | None]:
    """``(file, separate test file or None)``."""
    if root.is_file():
        if root.suffix != ".npz":
            raise DatasetNotFoundError(f"npz: {str(root)!r} is not an .npz file; set data.root to {_NPZ_EXPECTS}")
        return root, None
    if (root / "train.npz").is_file() and (root / "test.npz").is_file():
        return root / "train.npz", root / "test.npz"
    found = sorted(root.glob("*.npz"))
    if len(found) == 1:
        return found[0], None
    if not found:
        raise DatasetNotFoundError(f"npz: {str(root)!r} holds no .npz file; set data.root to {_NPZ_EXPECTS}")
    raise ValueError(
        f"npz: {str(root)!r} holds {[p.name for p in found]}; set data.root to one of them, "
        "or name them train.npz and test.npz"
    )


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        # allow_pickle=False: a data file must never run code; object arrays are refused below.
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        # numpy's own message for object arrays advises allow_pickle=True, which would let a data file
        # run code: say what the file holds instead.
        what = "holds Python objects, not plain arrays" if "allow_pickle" in str(error) else f"is not a readable npz file ({error})"
        raise ValueError(f"npz: {path} {what}; write numeric arrays only, {_SAVE_HINT}") from error


def _require(arrays: dict[str, np.ndarray], keys: tuple[str, ...], path: Path) -> None:
    missing = [key for key in keys if key not in arrays]
    if missing:
        raise ValueError(
            f"npz: {path} has no array {' or '.join(missing)} (it has {sorted(arrays)}); add the missing arrays, {_SAVE_HINT}"
        )


def _layout(arrays: dict[str, np.ndarray], path: Path) -> str | None:
    if "layout" not in arrays:
        return None
    layout = str(arrays["layout"]).upper()
    if layout not in ("NCHW", "NHWC"):
        raise ValueError(f"npz: {path} has layout {str(arrays['layout'])!r}; it must be 'NCHW' or 'NHWC'")
    return layout


def _images(x: np.ndarray, key: str, path: Path, layout: str | None) -> Tensor:
    where = f"npz: {path} array {key!r}"
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        if layout is None:
            if x.shape[1] == x.shape[3]:
                raise ValueError(
                    f"{where} is shaped {x.shape}: channels could be axis 1 or 3; add layout='NCHW' or layout='NHWC' "
                    "to the file"
                )
            layout = "NCHW" if x.shape[1] < x.shape[3] else "NHWC"
        if layout == "NHWC":
            x = x.transpose(0, 3, 1, 2)
    else:
        raise ValueError(f"{where} is shaped {x.shape}; images must be (N, H, W), (N, H, W, C) or (N, C, H, W)")
    if len(x) == 0:
        raise ValueError(f"{where} holds no images; save at least one example per split")
    if np.issubdtype(x.dtype, np.integer):
        low, high = int(x.min()), int(x.max())
        if low < 0 or high > 255:
            raise ValueError(f"{where} holds integers in [{low}, {high}]; integer images must be 0-255 pixels (uint8)")
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).div_(255.0)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{where} has dtype {x.dtype}; store images as uint8 pixels or floats")
    images = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"{where} holds NaN or infinite values; fix or drop those images")
    extreme = float(images.abs().max())
    if extreme > FLOAT_IMAGE_LIMIT:
        raise ValueError(
            f"{where} holds floats up to {extreme:g} in magnitude; float images must lie within "
            f"[-{FLOAT_IMAGE_LIMIT:g}, {FLOAT_IMAGE_LIMIT:g}]: save 0-255 pixels as uint8 (scaled on loading) "
            "or divide them by 255"
        )
    return images


def _labels(y: np.ndarray, key: str, path: Path, count: int) -> Tensor:
    where = f"npz: {path} array {key!r}"
    if y.ndim != 1:
        fix = "save y.argmax(1) for one-hot labels" if y.ndim == 2 and y.shape[1] > 1 else "save y.ravel()"
        raise ValueError(f"{where} is shaped {y.shape}; labels must be one integer per example, shaped (N,): {fix}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"{where} has dtype {y.dtype}; labels must be integer class indices 0..K-1: save y.astype(np.int64)"
        )
    if len(y) != count:
        raise ValueError(f"{where} has {len(y)} labels for {count} images; save one label per image")
    if len(y) and int(y.min()) < 0:
        raise ValueError(f"{where} holds the negative label {int(y.min())}; labels must be class indices 0..K-1")
    return torch.from_numpy(y.astype(np.int64))


def _split(arrays: dict[str, np.ndarray], x_key: str, y_key: str, path: Path) -> Split:
    images = _images(arrays[x_key], x_key, path, _layout(arrays, path))
    return Split(images, _labels(arrays[y_key], y_key, path, len(images)))


@register_dataset("npz", None, expects=_NPZ_EXPECTS, file_root=True)
def _npz(root: Path, cache: Path) -> tuple[Split, Split, int]:
    path, test_path = _npz_files(root)
    arrays = _read_npz(path)
    _require(arrays, ("x", "y"), path)
    if test_path is not None:
        test_arrays = _read_npz(test_path)
        _require(test_arrays, ("x", "y"), test_path)
        train, test = _split(arrays, "x", "y", path), _split(test_arrays, "x", "y", test_path)
    elif "x_test" in arrays or "y_test" in arrays:
        _require(arrays, ("x_test", "y_test"), path)
        train, test = _split(arrays, "x", "y", path), _split(arrays, "x_test", "y_test", path)
    else:
        full = _split(arrays, "x", "y", path)
        train, test = _hold_out_test(full.images, full.labels, "npz")
    if train.images.shape[1:] != test.images.shape[1:]:
        raise ValueError(
            f"npz: training images are shaped {tuple(train.images.shape[1:])} but test images "
            f"{tuple(test.images.shape[1:])} (as (C, H, W)); save both splits at one size and layout"
        )
    largest = int(torch.cat([train.labels, test.labels]).max())
    if "classes" not in arrays:
        return train, test, largest + 1
    num_classes = len(np.atleast_1d(arrays["classes"]))
    if largest >= num_classes:
        raise ValueError(
            f"npz: {path} names {num_classes} classes but has the label {largest}; labels must index into classes"
        )
    return train, test, num_classes

"""Datasets from a local root, through torchvision's dataset classes; nothing is ever downloaded.

A root may be in torchvision's own layout (``<root>/FashionMNIST/raw/...``) or hold the IDX files
directly, as Debian's ``dataset-fashion-mnist`` package does (gzipped, read-only, in
``/usr/share/datasets/fashion-mnist``). The second layout is staged once into a cache directory in
torchvision's layout, with torchvision's own extractor, and torchvision reads it from there.

Images are kept as one float tensor in ``[0, 1]`` per split: at these sizes iterating tensor slices
is several times faster than a ``DataLoader`` that decodes one PIL image per example.

The user's own data (``image_folder``, ``npz``) is registered in ``bmrs.data_files``.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import Tensor

DEFAULT_CACHE = Path(os.environ.get("BMRS_CACHE_DIR", Path.home() / ".cache" / "bmrs"))


class DatasetNotFoundError(ValueError):
    """The dataset's files are not under the given root."""


@dataclass(frozen=True)
class Split:
    images: Tensor  # float32 (N, C, H, W) in [0, 1]
    labels: Tensor  # int64 (N,)

    def __len__(self) -> int:
        return self.labels.numel()

    def batches(self, batch_size: int, *, generator: torch.Generator | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """Minibatches in a random order when ``generator`` is given, in stored order otherwise."""
        order = torch.randperm(len(self), generator=generator) if generator is not None else None
        for start in range(0, len(self), batch_size):
            if order is None:
                yield self.images[start : start + batch_size], self.labels[start : start + batch_size]
            else:
                index = order[start : start + batch_size]
                yield self.images[index], self.labels[index]


@dataclass(frozen=True)
class DataBundle:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.images.shape[1:])


Loader = Callable[[Path, Path], tuple[Split, Split, int]]
DATASETS: dict[str, Loader] = {}
DEFAULT_ROOTS: dict[str, str | None] = {}  # None: the user's own data, no conventional place
ROOT_EXPECTS: dict[str, str] = {}  # what a root must be, for the user's own formats
FILE_ROOTS: set[str] = set()  # datasets whose root may be a single file


def register_dataset(
    name: str, default_root: str | None, *, expects: str | None = None, file_root: bool = False
) -> Callable[[Loader], Loader]:
    def add(loader: Loader) -> Loader:
        DATASETS[name] = loader
        DEFAULT_ROOTS[name] = default_root
        if expects is not None:
            ROOT_EXPECTS[name] = expects
        if file_root:
            FILE_ROOTS.add(name)
        return loader

    return add


def resolve_root(name: str, root: str | None, *, setting: str = "root") -> str:
    """``root``, or dataset ``name``'s default location when it is None; ``setting`` is what the
    caller calls the root, so that the error names the key to set."""
    if root is not None:
        return root
    default = DEFAULT_ROOTS.get(name)
    if default is None:
        raise ValueError(f"{setting} is not set and {name} has no default location; set {setting}")
    return default


def root_hint(name: str) -> str:
    """What ``data.root`` must point to for dataset ``name``."""
    return ROOT_EXPECTS.get(name, f"a folder with the {name} files (torchvision's layout)")


def load_dataset(
    name: str, root: str | Path, *, val_fraction: float = 0.2, seed: int = 0, cache_dir: str | Path | None = None
) -> DataBundle:
    """Train/validation split of the training set (seeded), test set held out."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetNotFoundError(f"dataset root {str(root)!r} for {name} does not exist; {_install_hint(name)}")
    if not root.is_dir() and name not in FILE_ROOTS:
        raise DatasetNotFoundError(f"dataset root {str(root)!r} for {name} is not a folder; {_install_hint(name)}")
    full_train, test, num_classes = DATASETS[name](root, Path(cache_dir or DEFAULT_CACHE) / "datasets" / name)
    order = torch.randperm(len(full_train), generator=torch.Generator().manual_seed(seed))
    num_val = int(round(val_fraction * len(full_train)))
    if not 0 < num_val < len(full_train):
        raise ValueError(
            f"{name}: val_fraction {val_fraction} of {len(full_train)} training examples leaves an empty training "
            "or validation split; use more examples or a val_fraction nearer 0.5"
        )
    val_index, train_index = order[:num_val], order[num_val:]
    train = Split(full_train.images[train_index], full_train.labels[train_index])
    val = Split(full_train.images[val_index], full_train.labels[val_index])
    return DataBundle(name, train, val, test, num_classes)


def _install_hint(name: str) -> str:
    if name == "fashion_mnist":
        return "install it with `apt-get install -y dataset-fashion-mnist` or set data.root to a folder with its IDX files"
    if name in ROOT_EXPECTS:
        return f"set data.root to {ROOT_EXPECTS[name]}"
    return f"put the {name} files there (torchvision's layout) or set data.root to where they are"


_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _stage_idx_files(name: str, root: Path, folder: str, cache: Path) -> Path:
    """A root torchvision's MNIST-style classes accept: ``root`` itself, or a staged copy in ``cache``."""
    if all((root / folder / "raw" / f).is_file() for f in _MNIST_FILES):
        return root
    from torchvision.datasets.utils import extract_archive

    raw = cache / folder / "raw"
    for file in _MNIST_FILES:
        if (raw / file).is_file():
            continue
        plain, gz = root / file, root / f"{file}.gz"
        raw.mkdir(parents=True, exist_ok=True)
        partial = raw / f".{file}.partial"
        if plain.is_file():
            shutil.copyfile(plain, partial)
        elif gz.is_file():
            # torchvision decompresses a plain .gz into the given folder, named without ".gz".
            shutil.copyfile(gz, raw / f".{file}.partial.gz")
            extract_archive(str(raw / f".{file}.partial.gz"), str(raw), remove_finished=True)
        else:
            raise DatasetNotFoundError(
                f"{name}: {file} (or {file}.gz) is missing from {str(root)!r}; {_install_hint(name)}"
            )
        partial.replace(raw / file)  # complete files only: a crash mid-copy never leaves a truncated one
    return cache


def _mnist_style(dataset_cls_name: str, folder: str, name: str) -> Loader:
    def load(root: Path, cache: Path) -> tuple[Split, Split, int]:
        import torchvision.datasets as tvd

        dataset_cls = getattr(tvd, dataset_cls_name)
        staged = _stage_idx_files(name, root, folder, cache)
        splits = []
        for train in (True, False):
            ds = dataset_cls(str(staged), train=train, download=False)
            images = ds.data.unsqueeze(1).float().div_(255.0)
            splits.append(Split(images, ds.targets.long()))
        return splits[0], splits[1], len(ds.classes)

    return load


register_dataset("fashion_mnist", "/usr/share/datasets/fashion-mnist")(_mnist_style("FashionMNIST", "FashionMNIST", "fashion_mnist"))
register_dataset("mnist", "~/data/mnist")(_mnist_style("MNIST", "MNIST", "mnist"))


@register_dataset("cifar10", "~/data/cifar10")
def _cifar10(root: Path, cache: Path) -> tuple[Split, Split, int]:
    import torchvision.datasets as tvd

    if not (root / "cifar-10-batches-py").is_dir():
        raise DatasetNotFoundError(f"cifar10: {str(root)!r} has no cifar-10-batches-py folder; {_install_hint('cifar10')}")
    splits = []
    for train in (True, False):
        ds = tvd.CIFAR10(str(root), train=train, download=False)
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).float().div_(255.0).contiguous()
        splits.append(Split(images, torch.as_tensor(ds.targets, dtype=torch.long)))
    return splits[0], splits[1], len(ds.classes)


# The user's own formats register themselves here; imported last because they build on the above.
from bmrs import data_files as _data_files  # noqa: E402,F401

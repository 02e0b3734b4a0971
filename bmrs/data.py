"""Datasets from a local root, through torchvision's dataset classes; nothing is ever downloaded.

A root may be in torchvision's own layout (``<root>/FashionMNIST/raw/...``) or hold the IDX files
directly, as Debian's ``dataset-fashion-mnist`` package does (gzipped, read-only, in
``/usr/share/datasets/fashion-mnist``). The second layout is staged into a cache directory in
torchvision's layout, and torchvision reads it from there. A staged copy is keyed by its source's
identity (each source file's resolved path, size, modification time and inode): a run always reads
the files its root holds now, and a root without them is refused even when some copy is cached.

Every dataset's labels are checked once loaded (``check_labels``): at least two classes, every label
a class index the model can output, no test class the training data lacks.

Images are kept as one float tensor in ``[0, 1]`` per split: at these sizes iterating tensor slices
is several times faster than a ``DataLoader`` that decodes one PIL image per example.

The user's own data (``image_folder``, ``npz``) is registered in ``bmrs.data_files``.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import secrets
import zlib
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
    """Train/validation split of the training set (seeded), test set held out.

    ``cache_dir`` (default ``DEFAULT_CACHE``) is where IDX files are staged; one that is given is
    checked here, whatever the dataset, so that a wrong setting fails before anything is written.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if isinstance(root, str) and not root.strip():
        # Path("") is the working directory: an empty setting must not quietly mean "here".
        default = DEFAULT_ROOTS.get(name)
        unset = f", or leave it unset (null) for the default {default}" if default is not None else ""
        raise DatasetNotFoundError(f"dataset root for {name} is an empty string; {_install_hint(name)}{unset}")
    cache = _checked_cache_dir(cache_dir)
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetNotFoundError(f"dataset root {str(root)!r} for {name} does not exist; {_install_hint(name)}")
    if not root.is_dir() and name not in FILE_ROOTS:
        raise DatasetNotFoundError(f"dataset root {str(root)!r} for {name} is not a folder; {_install_hint(name)}")
    full_train, test, num_classes = DATASETS[name](root, cache / "datasets" / name)
    check_labels(name, root, full_train, test, num_classes)
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


def _checked_cache_dir(cache_dir: str | Path | None) -> Path:
    """``cache_dir`` (or the default), refused unless it is, or can be made, a writable folder."""
    if cache_dir is None:
        return DEFAULT_CACHE  # checked when something is staged: most datasets never write there
    fix = f"set data.cache_dir to a writable folder, or leave it unset (null) for {DEFAULT_CACHE}"
    if isinstance(cache_dir, str) and not cache_dir.strip():
        raise ValueError(f"the cache folder (data.cache_dir) is an empty string; {fix}")
    cache = Path(cache_dir).expanduser()
    existing = next(folder for folder in (cache, *cache.parents) if folder.exists())
    where = f"the cache folder (data.cache_dir) {str(cache)!r}"
    if not existing.is_dir():
        raise ValueError(f"{where} is not a folder ({str(existing)!r} is a file); {fix}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{where} is not writable ({str(existing)!r} is read-only); {fix}")
    return cache


def check_labels(name: str, root: Path, train: Split, test: Split, num_classes: int) -> None:
    """Refuse data a classifier cannot be trained or fairly tested on, naming the reason."""
    where = f"{name} at {str(root)!r}"
    for split_name, split in (("training", train), ("test", test)):
        if split.images.shape[0] != split.labels.numel():
            raise ValueError(
                f"{where}: the {split_name} split has {split.images.shape[0]} images but {split.labels.numel()} labels; "
                "give exactly one label per image"
            )
        if split.labels.dtype.is_floating_point or split.labels.dtype == torch.bool or split.labels.ndim != 1:
            raise ValueError(f"{where}: {split_name} labels must be one integer class index per image")
        if len(split) == 0:
            raise ValueError(f"{where}: the {split_name} split holds no examples; add some")
        low, high = int(split.labels.min()), int(split.labels.max())
        if low < 0 or high >= num_classes:
            bad = low if low < 0 else high
            raise ValueError(
                f"{where}: the {split_name} split has the label {bad}, outside the {num_classes} classes 0..{num_classes - 1}; "
                "labels must be class indices below the number of classes"
            )
    trained = set(train.labels.unique().tolist())
    if len(trained) < 2:
        raise ValueError(
            f"{where}: every training example has the label {trained.pop()}; a classifier needs at least two classes: "
            "add examples of the other classes"
        )
    untrained = sorted(set(test.labels.unique().tolist()) - trained)
    if untrained:
        raise ValueError(
            f"{where}: the test split has the labels {untrained}, which no training example has; the model cannot "
            "learn them: add training examples of those classes or drop them from the test split"
        )


def _install_hint(name: str) -> str:
    if name == "fashion_mnist":
        return "install it with `apt-get install -y dataset-fashion-mnist` or set data.root to a folder with its IDX files"
    if name in ROOT_EXPECTS:
        return f"set data.root to {ROOT_EXPECTS[name]}"
    return f"put the {name} files there (torchvision's layout) or set data.root to where they are"


_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _stage_idx_files(name: str, root: Path, folder: str, cache: Path) -> Path:
    """A root torchvision's MNIST-style classes accept: ``root`` itself, or a copy staged in
    ``cache/<identity of root's files>``, reused only while those files are unchanged."""
    if all((root / folder / "raw" / f).is_file() for f in _MNIST_FILES):
        return root
    sources = {}
    for file in _MNIST_FILES:
        plain, gz = root / file, root / f"{file}.gz"
        sources[file] = plain if plain.is_file() else gz if gz.is_file() else None
    missing = [file for file, source in sources.items() if source is None]
    if missing:
        listed = ", ".join(f"{file}(.gz)" for file in missing)
        raise DatasetNotFoundError(f"{name}: {str(root)!r} does not hold {listed}; {_install_hint(name)}")
    identity = [[str(source.resolve()), *_stat_identity(source)] for source in sources.values()]
    staged = cache / hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]
    raw = staged / folder / "raw"
    try:
        for file, source in sources.items():
            if not (raw / file).is_file():
                raw.mkdir(parents=True, exist_ok=True)
                _copy_complete(name, source, raw / file)
        if not (staged / "source.json").is_file():  # for whoever looks in the cache: where this copy came from
            _write_complete(staged / "source.json", json.dumps({"path_size_mtime_ns_inode": identity}, indent=1).encode())
    except OSError as error:
        raise ValueError(
            f"{name}: cannot stage {str(root)!r} into the cache folder {str(cache)!r} ({error.strerror or error}); "
            f"set data.cache_dir to a writable folder with free space"
        ) from error
    return staged


def _stat_identity(path: Path) -> tuple[int, int, int]:
    status = path.stat()
    return status.st_size, status.st_mtime_ns, status.st_ino


def _copy_complete(name: str, source: Path, target: Path) -> None:
    """``source`` (decompressed when it is ``.gz``) as ``target``, which appears complete or not at
    all: a crash, or another process staging the same files, never leaves a truncated one."""
    try:
        with (gzip.open(source) if source.suffix == ".gz" else open(source, "rb")) as handle:
            data = handle.read()
    except (OSError, EOFError, zlib.error) as error:
        raise DatasetNotFoundError(
            f"{name}: {str(source)!r} cannot be read ({error}); replace it with a complete copy: {_install_hint(name)}"
        ) from error
    _write_complete(target, data)


def _write_complete(target: Path, data: bytes) -> None:
    partial = target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.partial")
    try:
        partial.write_bytes(data)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


def _mnist_style(dataset_cls_name: str, folder: str, name: str) -> Loader:
    def load(root: Path, cache: Path) -> tuple[Split, Split, int]:
        import torchvision.datasets as tvd

        dataset_cls = getattr(tvd, dataset_cls_name)
        staged = _stage_idx_files(name, root, folder, cache)
        splits = []
        for train in (True, False):
            try:
                ds = dataset_cls(str(staged), train=train, download=False)
            except (AssertionError, TypeError, ValueError, RuntimeError) as error:  # torchvision's IDX parser
                prefix = "train" if train else "t10k"
                raise DatasetNotFoundError(
                    f"{name}: the {prefix}-*-ubyte files in {str(root)!r} are not valid IDX files "
                    f"({type(error).__name__}: {error}); replace them with complete copies: {_install_hint(name)}"
                ) from error
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

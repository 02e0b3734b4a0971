"""Fashion-MNIST, MNIST and CIFAR-10 through torchvision's dataset classes, from a local root.

A root may be in torchvision's own layout (``<root>/FashionMNIST/raw/...``) or hold the IDX files
directly, as Debian's ``dataset-fashion-mnist`` package does (gzipped, read-only, in
``/usr/share/datasets/fashion-mnist``). The second layout is staged into a cache directory in
torchvision's layout, and torchvision reads it from there. A staged copy is keyed by its source's
identity (each source file's resolved path, size, modification time and inode): a run always reads
the files its root holds now, and a root without them is refused even when some copy is cached.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import secrets
import zlib
from pathlib import Path

import torch

from bmrs.data.registry import DatasetNotFoundError, Loader, Split, install_hint, register_dataset


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
        raise DatasetNotFoundError(f"{name}: {str(root)!r} does not hold {listed}; {install_hint(name)}")
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
            f"{name}: {str(source)!r} cannot be read ({error}); replace it with a complete copy: {install_hint(name)}"
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
                    f"({type(error).__name__}: {error}); replace them with complete copies: {install_hint(name)}"
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
        raise DatasetNotFoundError(f"cifar10: {str(root)!r} has no cifar-10-batches-py folder; {install_hint('cifar10')}")
    splits = []
    for train in (True, False):
        ds = tvd.CIFAR10(str(root), train=train, download=False)
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).float().div_(255.0).contiguous()
        splits.append(Split(images, torch.as_tensor(ds.targets, dtype=torch.long)))
    return splits[0], splits[1], len(ds.classes)

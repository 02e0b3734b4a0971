"""The dataset registry and what every loader returns: ``Split``, ``DataBundle``.

A loader is ``(root, cache) -> (train split, test split, number of classes)``, registered under a
name with ``@register_dataset(name, default_root)``; ``bmrs.data.load_dataset`` looks it up.
"""
from __future__ import annotations

import os
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


def install_hint(name: str) -> str:
    """How to get dataset ``name`` under its root, for an error that says the files are missing."""
    if name == "fashion_mnist":
        return "install it with `apt-get install -y dataset-fashion-mnist` or set data.root to a folder with its IDX files"
    if name in ROOT_EXPECTS:
        return f"set data.root to {ROOT_EXPECTS[name]}"
    return f"put the {name} files there (torchvision's layout) or set data.root to where they are"

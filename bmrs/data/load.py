"""``load_dataset``: a registered dataset from a local root, split and checked."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from bmrs.data.registry import (
    DATASETS, DEFAULT_CACHE, DEFAULT_ROOTS, FILE_ROOTS, DataBundle, DatasetNotFoundError, Split, install_hint,
)  # fmt: skip


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
        raise DatasetNotFoundError(f"dataset root for {name} is an empty string; {install_hint(name)}{unset}")
    cache = _checked_cache_dir(cache_dir)
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetNotFoundError(f"dataset root {str(root)!r} for {name} does not exist; {install_hint(name)}")
    if not root.is_dir() and name not in FILE_ROOTS:
        raise DatasetNotFoundError(f"dataset root {str(root)!r} for {name} is not a folder; {install_hint(name)}")
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

"""``DataConfig`` and ``load_data``: the data stage's typed config and its verb."""
from __future__ import annotations

from dataclasses import dataclass, replace

from bmrs.data.load import load_dataset
from bmrs.data.registry import DataBundle, Split, resolve_root


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "fashion_mnist"
    root: str | None = None  # None: the dataset's default root (Fashion-MNIST: Debian's package)
    val_fraction: float = 0.2
    seed: int = 0
    cache_dir: str | None = None
    max_train_examples: int | None = None  # train on a subset: smoke tests and quick looks

    def __post_init__(self) -> None:
        limit = self.max_train_examples
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(f"data.max_train_examples must be >= 1 or null, got {limit!r}")

    def resolved_root(self) -> str:
        return resolve_root(self.dataset, self.root, setting="data.root")


def load_data(config: DataConfig) -> DataBundle:
    """The dataset ``config`` names, split into train/validation/test; nothing is downloaded."""
    if not isinstance(config, DataConfig):
        raise TypeError(f"load_data takes a DataConfig, e.g. DataConfig(dataset='fashion_mnist'); got {config!r}")
    data = load_dataset(
        config.dataset, config.resolved_root(), val_fraction=config.val_fraction, seed=config.seed, cache_dir=config.cache_dir
    )
    limit = config.max_train_examples
    if limit is not None:
        data = replace(data, train=Split(data.train.images[:limit], data.train.labels[:limit]))
    return data

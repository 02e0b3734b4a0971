"""Datasets from a local root; nothing is ever downloaded.

Layers: ``registry`` (``Split``, ``DataBundle``, the registry of loaders), ``torchvision_sets``
(Fashion-MNIST, MNIST, CIFAR-10), ``files`` (the user's own ``image_folder`` and ``npz``), ``load``
(``load_dataset``: look up, split, check labels), ``config`` (``DataConfig`` and ``load_data``, the
data stage's verb).

Every dataset's labels are checked once loaded (``check_labels``): at least two classes, every label
a class index the model can output, no test class the training data lacks. Images are kept as one
float tensor in ``[0, 1]`` per split: at these sizes iterating tensor slices is several times faster
than a ``DataLoader`` that decodes one PIL image per example.
"""
from bmrs.data import files, torchvision_sets  # noqa: F401  (each registers its loaders)
from bmrs.data.config import DataConfig, load_data
from bmrs.data.load import check_labels, load_dataset
from bmrs.data.registry import (
    DATASETS, DEFAULT_CACHE, DEFAULT_ROOTS, DataBundle, DatasetNotFoundError, Loader, Split, install_hint,
    register_dataset, resolve_root, root_hint,
)  # fmt: skip

__all__ = [
    "DATASETS", "DEFAULT_CACHE", "DEFAULT_ROOTS", "DataBundle", "DataConfig", "DatasetNotFoundError", "Loader", "Split",
    "check_labels", "install_hint", "load_data", "load_dataset", "register_dataset", "resolve_root", "root_hint",
]  # fmt: skip

"""Export a weight-sparse model and say what its zeros are worth: the file, a sparse encoding, the counts.

Unstructured sparsification (``bmrs.sparsify``) leaves every tensor its dense shape with most entries
exactly 0. The ONNX file of such a model is as large as the dense model's, and ONNX Runtime's dense
kernels multiply the zeros like any other number, so a sparse model is only smaller where it is
stored in a sparse format. ``sparse_export`` exports the dense-with-zeros model through
``export.onnx_export.export_onnx`` (checker and parity, as every export) and reports it beside two
sizes a sparse format could reach:

* ``csr_bytes``: every Linear/Conv2d weight matrix in compressed sparse row form, a conv weight
  flattened to ``(out_channels, in_channels/groups * kh * kw)``: the nonzero values in the weight's
  dtype (4 bytes each for float32), one int32 column index per nonzero and ``rows + 1`` int32 row
  pointers. ``sparse_model_bytes`` adds every other parameter and buffer (biases, BatchNorm) dense.
* ``deflate_bytes``: the ONNX file itself compressed by zlib (deflate) at level 9, a file-level
  figure that needs no sparse kernels: what shipping or storing the file compressed costs.

Counts: ``weights`` / ``nonzero_weights`` over the Linear/Conv2d weights (what ``sparsity``, the
fraction removed, is of; ``bmrs.sparsify.weight_sparsity`` counts the same), ``parameters`` /
``nonzero_parameters`` over every parameter, biases included. ``onnx_zeros`` counts the exact zeros
among the file's float initializers, so the report shows that the file holds them rather than
trusting the module it came from.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from torch import Tensor, nn

from export.onnx_export import OnnxConfig, OnnxResult, export_onnx

__all__ = ["INDEX_BYTES", "LayerSparsity", "SparseExport", "csr_bytes", "deflate_bytes", "layer_sparsity", "sparse_export"]

INDEX_BYTES = 4  # int32 column indices and row pointers
INDEX_LIMIT = 2**31 - 1
DEFLATE_LEVEL = 9
SPARSE_LAYERS = (nn.Linear, nn.Conv2d)


def csr_bytes(weight: Tensor) -> int:
    """Bytes of ``weight`` in CSR form: ``nnz`` values in its dtype, ``nnz`` int32 column indices and
    ``rows + 1`` int32 row pointers, the matrix being ``weight`` flattened to ``(shape[0], -1)`` (a
    conv kernel's row is one output channel's ``in/groups * kh * kw`` taps)."""
    if not isinstance(weight, Tensor):
        raise TypeError(f"csr_bytes takes a weight tensor, got {type(weight).__name__}")
    if weight.dim() < 1:
        raise ValueError(f"csr_bytes takes a weight with at least one dimension (rows), got shape {tuple(weight.shape)}")
    rows = weight.shape[0]
    nonzero = int((weight != 0).sum())
    if weight.numel() // max(rows, 1) > INDEX_LIMIT or nonzero > INDEX_LIMIT:
        raise ValueError(
            f"a weight of shape {tuple(weight.shape)} with {nonzero} nonzeros needs column indices or row pointers "
            "beyond int32; CSR with int64 indices would be needed"
        )
    return nonzero * (weight.element_size() + INDEX_BYTES) + (rows + 1) * INDEX_BYTES


def deflate_bytes(path: str | os.PathLike) -> int:
    """Size of the file at ``path`` compressed by zlib (deflate) at level 9."""
    return len(zlib.compress(Path(path).read_bytes(), DEFLATE_LEVEL))


@dataclass(frozen=True)
class LayerSparsity:
    """One Linear/Conv2d weight: its shape, entries, nonzeros, and its bytes dense and in CSR."""

    name: str
    shape: tuple[int, ...]
    weights: int
    nonzero: int
    dense_bytes: int
    csr_bytes: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzero / self.weights if self.weights else 0.0


def layer_sparsity(model: nn.Module) -> list[LayerSparsity]:
    """Every Linear/Conv2d weight of ``model`` in module order (a shared layer once)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"layer_sparsity takes an nn.Module, got {type(model).__name__}")
    layers = []
    for name, module in model.named_modules():
        if isinstance(module, SPARSE_LAYERS):
            weight = module.weight.detach()
            layers.append(LayerSparsity(
                name=name, shape=tuple(weight.shape), weights=weight.numel(), nonzero=int((weight != 0).sum()),
                dense_bytes=weight.numel() * weight.element_size(), csr_bytes=csr_bytes(weight),
            ))  # fmt: skip
    return layers


@dataclass(frozen=True)
class SparseExport:
    """A verified dense-with-zeros ONNX export and what its zeros are worth (see the module docstring).

    ``onnx``: ``export_onnx``'s result (path, parity). ``onnx_bytes``: the file's size;
    ``deflate_bytes``: the file compressed (zlib level 9). ``dense_weight_bytes`` / ``csr_bytes``:
    the Linear/Conv2d weights dense and in CSR; ``other_bytes``: every other parameter and buffer,
    dense; ``sparse_model_bytes = csr_bytes + other_bytes``. ``onnx_values`` / ``onnx_zeros``: float
    entries of the file's initializers and how many are exactly 0."""

    onnx: OnnxResult
    onnx_bytes: int
    deflate_bytes: int
    weights: int
    nonzero_weights: int
    sparsity: float
    parameters: int
    nonzero_parameters: int
    dense_weight_bytes: int
    csr_bytes: int
    other_bytes: int
    onnx_values: int
    onnx_zeros: int
    layers: tuple[LayerSparsity, ...]

    @property
    def sparse_model_bytes(self) -> int:
        return self.csr_bytes + self.other_bytes

    def summary(self) -> dict[str, object]:
        """What a report records, JSON-safe."""
        return {
            "path": str(self.onnx.path), "onnx_bytes": self.onnx_bytes, "deflate_bytes": self.deflate_bytes,
            "weights": self.weights, "nonzero_weights": self.nonzero_weights, "sparsity": self.sparsity,
            "parameters": self.parameters, "nonzero_parameters": self.nonzero_parameters,
            "dense_weight_bytes": self.dense_weight_bytes, "csr_bytes": self.csr_bytes, "other_bytes": self.other_bytes,
            "sparse_model_bytes": self.sparse_model_bytes, "onnx_values": self.onnx_values, "onnx_zeros": self.onnx_zeros,
            "max_abs_diff": self.onnx.max_abs_diff,
            "layers": [{**asdict(layer), "shape": list(layer.shape), "sparsity": layer.sparsity} for layer in self.layers],
        }  # fmt: skip


def _initializer_zeros(path: Path) -> tuple[int, int]:
    """Float entries of the file's initializers and how many are exactly 0."""
    values = zeros = 0
    for initializer in onnx.load(str(path)).graph.initializer:
        array = numpy_helper.to_array(initializer)
        if np.issubdtype(array.dtype, np.floating):
            values += array.size
            zeros += int(np.count_nonzero(array == 0))
    return values, zeros


def sparse_export(
    model: nn.Module, example_input: Tensor, path: str | os.PathLike, config: OnnxConfig = OnnxConfig()
) -> SparseExport:
    """Export ``model`` (plain layers whose weights hold exact zeros, e.g. ``sparsify_``'s result) to
    ``path`` with ``export_onnx`` (same arguments, same checks and errors) and measure its sparsity
    and sizes; see ``SparseExport``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"sparse_export takes an nn.Module, got {type(model).__name__}")
    layers = layer_sparsity(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no nn.Linear or nn.Conv2d layer, so it has no weight sparsity to report")
    result = export_onnx(model, example_input, path, config)
    layer_weights = {id(module.weight) for module in model.modules() if isinstance(module, SPARSE_LAYERS)}
    parameters = list(model.parameters())
    other = [p for p in parameters if id(p) not in layer_weights] + list(model.buffers())
    onnx_values, onnx_zeros = _initializer_zeros(result.path)
    weights = sum(layer.weights for layer in layers)
    nonzero_weights = sum(layer.nonzero for layer in layers)
    return SparseExport(
        onnx=result,
        onnx_bytes=result.file_bytes,
        deflate_bytes=deflate_bytes(result.path),
        weights=weights,
        nonzero_weights=nonzero_weights,
        sparsity=1.0 - nonzero_weights / weights,
        parameters=sum(p.numel() for p in parameters),
        nonzero_parameters=sum(int((p != 0).sum()) for p in parameters),
        dense_weight_bytes=sum(layer.dense_bytes for layer in layers),
        csr_bytes=sum(layer.csr_bytes for layer in layers),
        other_bytes=sum(t.numel() * t.element_size() for t in other if t.is_floating_point() or t.dtype.is_complex),
        onnx_values=onnx_values,
        onnx_zeros=onnx_zeros,
        layers=tuple(layers),
    )

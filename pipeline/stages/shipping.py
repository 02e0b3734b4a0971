"""The stages that produce what ships: ``model.onnx`` (and the sliced PyTorch model beside it) and
``dense.onnx``, each verified end to end against the PyTorch model whose accuracy the run reports,
with the file's own metadata. With ``sparsify.enabled`` ``model.onnx`` is the ``sparsify`` stage's
model, dense-with-zeros (``pipeline.stages.sparsifying``)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from bmrs.data import DataBundle
from export.onnx_export import OnnxResult, export_onnx, write_metadata
from export.onnx_options import run_metadata
from export.saved import save_sliced
from export.slicing import count_flops, count_params, slice_model
from export.sparse import SparseExport, sparse_export
from export.verify import DataParity, EndToEndParityError, check_data_parity, onnx_metrics
from pipeline.config import FlowConfig
from pipeline.stages import sparsifying
from pipeline.stages.steps import _test_metrics, build, example_input, restore

SLICED_DIR = "sliced"  # sliced.json + sliced.pt: the sliced model, reloadable by export.saved.load_sliced


def compress_stage(config: FlowConfig, data: DataBundle, run_dir: Path, checkpoint: Path) -> dict[str, Any]:
    """Fold the noise, slice the pruned structures away and export ``model.onnx``; then check the file
    end to end against the masked model in evaluation mode (the model that was trained and evaluated)
    on real test examples, and measure the file itself through ONNX Runtime: the reported accuracy,
    NLL and ECE are those of what ships. ``torch_accuracy`` (also ``masked_accuracy``) is the masked
    model's, ``sliced_accuracy`` the sliced PyTorch model's. With ``export.round_to`` the sliced
    widths are rounded up: ``compression`` is the shipped model's, ``compression_unrounded`` what
    slicing every pruned structure would give. The file's metadata (``bmrs.*`` keys) records the
    method, compression, measured accuracy, project version, flow and input shape.

    With ``sparsify.enabled`` what ships is the ``sparsify`` stage's model instead (the same sliced
    architecture, most weights exactly 0): ``model.onnx`` is that model dense-with-zeros, checked
    against it; ``torch_accuracy`` is its own, ``masked_accuracy`` and ``sliced_accuracy`` those of
    the model it started from, and ``compression`` is every parameter removed, structures and
    weights together (``total_removed``). Every run reports ``weight_sparsity`` (exact zeros among
    the shipped Linear/Conv2d weights), ``structured_compression`` (what slicing removed),
    ``total_removed`` (1 - nonzero parameters / the dense model's parameters), ``nonzero_params``
    and ``sparse_encoding``: the file's bytes, deflated, and the weights in CSR (``export.sparse``)."""
    noisy = config.train.criterion is not None
    sparse = config.sparsify.enabled
    model = restore(config, data, checkpoint, noisy=noisy)
    sample = example_input(data)
    masked = _test_metrics(model, data)
    sliced = slice_model(model, sample, round_to=config.export.round_to)
    sliced_accuracy = _test_metrics(sliced.model, data)["accuracy"]
    shipped, reference = sliced.model, model
    describe = f"model.onnx against {'the masked model' if noisy else 'the trained model'} in evaluation mode"
    torch_accuracy = masked["accuracy"]
    if sparse:
        shipped = reference = sparsifying.load_sparsified(run_dir)
        describe = "model.onnx against the sparsified model (posterior means, removed weights exactly 0)"
        torch_accuracy = _test_metrics(shipped, data)["accuracy"]
    # The shipped PyTorch model too, reloadable without this code path and without unpickling.
    saved = save_sliced(run_dir / SLICED_DIR, shipped, model_config=config.model, input_shape=data.input_shape,
                        num_classes=data.num_classes, keep=sliced.keep)  # fmt: skip
    exported = sparse_export(shipped, sample, run_dir / "model.onnx", config.export)
    onnx = exported.onnx
    parity = verify_onnx(config, data, run_dir, reference, onnx, describe=describe)
    metrics = onnx_metrics(onnx.path, data.test).as_dict()
    total_removed = 1.0 - exported.nonzero_parameters / sliced.dense_params
    compression = total_removed if sparse else sliced.compression
    rounded = config.export.round_to is not None and config.export.round_to > 1
    write_metadata(onnx.path, run_metadata(config.name, data.input_shape, {
        "method": config.method if noisy or sparse else "dense",
        "method_settings": json.dumps(config.to_dict()["train"]["criterion"], sort_keys=True) if noisy else None,
        "compression": f"{compression:.6f}", "accuracy": f"{metrics['accuracy']:.6f}",
        "round_to": config.export.round_to if rounded else None,
        "compression_unrounded": f"{sliced.compression_unrounded:.6f}" if rounded else None,
        "weight_sparsity": f"{exported.sparsity:.6f}" if sparse else None,
        "structured_compression": f"{sliced.compression:.6f}" if sparse else None,
    }))  # fmt: skip
    return {
        "params": sliced.pruned_params,
        "flops": sliced.pruned_flops,
        **metrics,
        "torch_accuracy": torch_accuracy,
        "masked_accuracy": masked["accuracy"],
        "sliced_accuracy": sliced_accuracy,
        "compression": compression,
        "compression_unrounded": sliced.compression_unrounded,
        "params_unrounded": sliced.pruned_params_unrounded,
        "round_to": config.export.round_to,
        "widths": sliced.widths,
        "sliced_model": f"{SLICED_DIR}/{saved.description.name}",  # relative to the run directory
        "unpruned_params": sliced.dense_params,
        "weight_sparsity": exported.sparsity,
        "structured_compression": sliced.compression,
        "total_removed": total_removed,
        "nonzero_params": exported.nonzero_parameters,
        "sparse_encoding": sparse_encoding(exported),
        "onnx": {**onnx.summary(), "parity": parity.summary()},
    }


def sparse_encoding(exported: SparseExport) -> dict[str, Any]:
    """What the shipped model's zeros are worth in bytes: the ONNX file as written (dense, zeros
    included), the file deflated (zlib level 9), the Linear/Conv2d weights in CSR form (int32
    indices) and with every other tensor dense; and the counts those are of."""
    return {
        "onnx_bytes": exported.onnx_bytes,
        "deflate_bytes": exported.deflate_bytes,
        "csr_bytes": exported.csr_bytes,
        "dense_weight_bytes": exported.dense_weight_bytes,
        "sparse_model_bytes": exported.sparse_model_bytes,
        "weights": exported.weights,
        "nonzero_weights": exported.nonzero_weights,
        "onnx_zeros": exported.onnx_zeros,
    }


def verify_onnx(
    config: FlowConfig, data: DataBundle, run_dir: Path, reference: nn.Module, onnx: OnnxResult, *, describe: str
) -> DataParity:
    """``onnx``'s file against ``reference`` on the first ``checks.parity_examples`` test examples.
    On a mismatch the file is removed (it does not compute what was measured) and the run fails;
    the trained stages stay, so ``bmrs resume`` redoes only the stages after training."""
    images = data.test.images[: config.checks.parity_examples]
    try:
        return check_data_parity(reference, onnx.path, images, config.export, describe=describe)
    except EndToEndParityError as error:
        onnx.path.unlink(missing_ok=True)
        fix = (
            "train again with a lower train.lr"
            if error.diverged
            else "slicing or export does not reproduce this model exactly: list noise points on other layers "
            f"(model.noise_points) or report the model; the trained checkpoints are kept in {run_dir}, and "
            f"`bmrs resume {run_dir}` redoes the stages after training"
        )
        raise EndToEndParityError(f"{error}. {onnx.path.name} was removed; {fix}", diverged=error.diverged) from error


def dense_stage(config: FlowConfig, data: DataBundle, run_dir: Path, checkpoint: Path | None) -> dict[str, Any]:
    """The dense reference: the trained baseline (its metrics measured on ``dense.onnx``, checked end
    to end like ``model.onnx``), or (without one) the untrained architecture's size only. Its
    metadata is ``model.onnx``'s with method "dense" and compression 0; no ``bmrs.accuracy`` for an
    untrained architecture, whose accuracy is not measured."""
    sample = example_input(data)
    model = build(config, data, noisy=False).eval() if checkpoint is None else restore(config, data, checkpoint, noisy=False)
    onnx = export_onnx(model, sample, run_dir / "dense.onnx", config.export)
    parity = verify_onnx(config, data, run_dir, model, onnx, describe="dense.onnx against the dense model")
    metrics: dict[str, Any] = {"accuracy": None, "nll": None, "ece": None, "torch_accuracy": None}
    if checkpoint is not None:
        metrics = {**onnx_metrics(onnx.path, data.test).as_dict(), "torch_accuracy": _test_metrics(model, data)["accuracy"]}
    accuracy = None if metrics["accuracy"] is None else f"{metrics['accuracy']:.6f}"
    write_metadata(onnx.path, run_metadata(config.name, data.input_shape, {"method": "dense", "compression": "0", "accuracy": accuracy}))
    return {
        "params": count_params(model),
        "flops": count_flops(model, sample),
        **metrics,
        "onnx": {**onnx.summary(), "parity": parity.summary()},
    }

"""BMRS structured pruning, from a dataset to a verified ONNX file, as plain Python calls.

One verb per stage, each taking a frozen config; the CLI (``bmrs run``) composes the same verbs.

1. Data      ``DataConfig`` -> ``load_data(config)`` -> ``DataBundle`` (train/val/test ``Split``\\s,
             ``input_shape``, ``num_classes``); nothing is downloaded.
2. Model     ``ModelConfig`` + ``NoiseInit`` -> ``build_network(config, input_shape, num_classes,
             noise=NoiseInit(), seed=0)``: a registered family (``lenet5``, ``mlp``, ``resnet20``,
             ``resnet18/34/50``, ``mobilenet_v2``, ``vit_tiny``, ``vit_b_16``) or your own
             ``package.module:factory``, with noise layers where structures can be removed (coupled
             layers, e.g. a residual stream's, as one group).
3. Train     ``TrainConfig`` (``criterion``: a criterion of ``bmrs.criteria``) ->
             ``train_(model, data, config)`` -> ``TrainResult`` (the pruned model, per-epoch history).
4. Slice     ``slice_model(model, example_input, round_to=None)`` -> ``SliceResult`` (the folded,
             sliced plain model, its widths, parameter and MAC counts, ``compression``, the masks);
             ``save_sliced(dir, model, ...)`` / ``load_sliced(dir)``: the sliced model on disk, no pickle.
5. Export    ``OnnxConfig`` -> ``export_onnx(model, example_input, path, config)`` -> ``OnnxResult``:
             the file is written only once ``onnx.checker`` and ONNX Runtime parity passed.
6. Measure   ``classification_metrics(model, split)`` (accuracy, NLL, ECE of a PyTorch model),
             ``onnx_metrics(path, split)`` (the same, of the ONNX file itself),
             ``check_data_parity(reference, path, images, config, describe=...)`` (the file against
             the evaluated model on real data), ``LatencyConfig`` -> ``measure_latency(models,
             input_shape, config)`` -> ``LatencyReport`` (ONNX Runtime, models timed interleaved),
             ``measure_torch_latency(modules, input_shape, config)`` (the same, PyTorch eager on
             ``TorchDevice`` CPU and CUDA).

Sub-packages: ``bmrs.criteria`` (the pruning criteria and their registry), ``bmrs.data``,
``bmrs.models``, ``bmrs.nn`` (noise layers, where noise goes, the fold), ``bmrs.train``,
``bmrs.math`` (the tail-stable numerics).

Every name is imported on first use (PEP 562): ``export`` and ``benchmarks`` import ``bmrs``
sub-modules, so importing them here eagerly would be an import cycle, and ``import bmrs`` stays
cheap (no torch, ONNX Runtime, Prefect or ``pipeline``).
"""
from __future__ import annotations

import importlib
from typing import Any

_SUBPACKAGES = ("criteria", "data", "math", "models", "nn", "train")

# name -> the module that owns it; grouped by stage, in the order of the docstring.
_NAMES = {
    "DataConfig": "bmrs.data", "DataBundle": "bmrs.data", "Split": "bmrs.data", "load_data": "bmrs.data",
    "ModelConfig": "bmrs.models", "NoiseInit": "bmrs.nn.insert", "build_network": "bmrs.models",
    "TrainConfig": "bmrs.train", "TrainResult": "bmrs.train", "KLWeighting": "bmrs.train",
    "FinetuneNoise": "bmrs.train", "ScheduleUnit": "bmrs.train", "train_": "bmrs.train",
    "SliceResult": "export.slicing", "slice_model": "export.slicing",
    "save_sliced": "export.saved", "load_sliced": "export.saved",
    "OnnxConfig": "export.onnx_export", "OnnxResult": "export.onnx_export", "OnnxParityError": "export.onnx_export",
    "export_onnx": "export.onnx_export",
    "ClassificationMetrics": "bmrs.train.metrics", "classification_metrics": "bmrs.train.metrics",
    "onnx_metrics": "export.verify", "check_data_parity": "export.verify", "DataParity": "export.verify",
    "LatencyConfig": "benchmarks.latency", "LatencyReport": "benchmarks.latency", "Provider": "benchmarks.latency",
    "measure_latency": "benchmarks.latency", "measure_torch_latency": "benchmarks.latency", "TorchDevice": "benchmarks.latency",
}  # fmt: skip

__all__ = [*_SUBPACKAGES, *_NAMES]


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}; its names are listed in bmrs.__all__")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

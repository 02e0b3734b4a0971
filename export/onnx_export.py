"""Export a plain (folded, sliced) model to ONNX and prove that the file computes the same thing.

The file is only trusted after ``onnx.checker`` accepts it and onnxruntime reproduces the PyTorch
evaluation output, within a tolerance, at several batch sizes, including sizes the exporter never
traced: a batch axis that silently became static is the classic way an export "works" and then
fails in deployment. The file is written under a temporary name and renamed only once all of that
passed, so a file at ``path`` always is a verified export.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import Tensor, nn

from bmrs.nn.noise import LogNormalNoise

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# The torch.export-based exporter only implements opset 18 and later; it "converts" down to a
# lower request on a best-effort basis and may silently keep 18.
MIN_DYNAMO_OPSET = 18
MIN_TORCHSCRIPT_OPSET = 9
# Logits beyond this on standard-normal inputs are not a classifier's (LeNet5 fine-tuned: ~460).
DIVERGED_OUTPUT = 1e6


def max_opset(dynamo: bool) -> int:
    """The newest opset the installed exporter writes. Beyond the installed onnx's newest, the
    dynamo exporter's conversion fails and it silently keeps opset 18; the TorchScript exporter
    stops at a limit of its own."""
    newest = onnx.defs.onnx_opset_version()
    if dynamo:
        return newest
    try:
        from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
    except ImportError:  # a torch without the constant: its exporter refuses a newer opset itself
        return newest
    return min(newest, ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)


class OnnxParityError(ValueError):
    """The exported ONNX model does not reproduce the PyTorch model's output."""


@dataclass(frozen=True)
class OnnxConfig:
    """How to export and how strictly to check.

    Over random inputs at every size in ``check_batch_sizes``, the max abs difference between
    onnxruntime and PyTorch outputs must stay within ``tolerance + relative_tolerance * scale``,
    ``scale`` being the largest absolute output of that batch. float32 rounding grows with the
    size of the terms summed into a logit, not with the logit itself (a logit near 0 can be a sum
    of hundreds), so the relative part scales with the batch's largest output rather than each
    element's. ``dynamo=False`` selects the legacy TorchScript exporter (deprecated by PyTorch)
    instead of the ``torch.export``-based one.
    """

    opset: int = 18
    tolerance: float = 1e-4
    # A few float32 epsilons (1.2e-7) per unit of logit: a pruned LeNet5 with logits of ~460 on
    # random inputs differs by 2e-4 between the two runtimes, 4.6e-7 of its largest logit.
    relative_tolerance: float = 1e-5
    check_batch_sizes: tuple[int, ...] = (1, 7, 64)
    dynamo: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.dynamo, bool):
            raise TypeError(f"dynamo must be True or False, got {self.dynamo!r}")
        if not isinstance(self.opset, int) or isinstance(self.opset, bool):
            raise TypeError(f"opset must be an int, got {self.opset!r}")
        minimum = MIN_DYNAMO_OPSET if self.dynamo else MIN_TORCHSCRIPT_OPSET
        if self.opset < minimum:
            hint = f"use opset >= {minimum}" + (", or dynamo=False for an older opset" if self.dynamo else "")
            raise ValueError(f"opset {self.opset} is too old for this exporter; {hint}")
        maximum = max_opset(self.dynamo)
        if self.opset > maximum:
            raise ValueError(
                f"opset {self.opset} is newer than the installed exporter writes (onnx {onnx.__version__}, torch "
                f"{torch.__version__}, {'dynamo' if self.dynamo else 'TorchScript'} exporter); choose {minimum} to {maximum}"
            )
        for name in ("tolerance", "relative_tolerance"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {value!r}")
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        sizes = self.check_batch_sizes
        if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence):
            raise TypeError(f"check_batch_sizes must be a tuple of ints, got {sizes!r}")
        if not sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes):
            raise ValueError(f"check_batch_sizes must be a non-empty tuple of ints >= 1, got {sizes!r}")
        # Frozen: a list given by the caller is stored as a tuple so the config stays immutable.
        object.__setattr__(self, "check_batch_sizes", tuple(sizes))


@dataclass(frozen=True)
class OnnxResult:
    """A verified export. ``opset`` is the default-domain opset recorded in the file;
    ``largest_output`` is the largest absolute PyTorch output over the parity checks, the scale
    ``max_abs_diff`` is judged against."""

    path: Path
    max_abs_diff: float
    largest_output: float
    opset: int
    input_name: str
    output_name: str
    file_bytes: int
    checked_batch_sizes: tuple[int, ...]

    def summary(self) -> dict[str, float | int | str]:
        """What a report records of the export."""
        return {"path": str(self.path), "max_abs_diff": self.max_abs_diff, "largest_output": self.largest_output, "bytes": self.file_bytes}


def export_onnx(
    model: nn.Module, example_input: Tensor, path: str | os.PathLike, config: OnnxConfig = OnnxConfig()
) -> OnnxResult:
    """Export ``model`` (evaluation mode) to ``path`` with a dynamic batch axis, then verify it.

    Input ``"input"`` and output ``"logits"`` have a symbolic axis 0; ``example_input`` fixes every
    other dimension. Parity is checked at ``config.check_batch_sizes``, plus one size the exporter
    did not trace if none of those differs from it (``OnnxResult.checked_batch_sizes`` lists what
    was checked). Raises ``OnnxParityError`` when onnxruntime rejects a batch size or differs
    from PyTorch by more than ``config.tolerance``; on any failure nothing is left at ``path``
    (a stale file from an earlier run is removed too, since it would pass for this run's result).
    The model's train/eval mode is restored afterwards.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"export_onnx takes an nn.Module, got {type(model).__name__}")
    if not isinstance(config, OnnxConfig):
        raise TypeError(f"config must be an OnnxConfig, got {type(config).__name__}")
    if not isinstance(example_input, Tensor) or example_input.dim() < 1 or example_input.shape[0] < 1:
        raise ValueError(
            f"example_input must be a non-empty batch tensor with the batch on axis 0, got {example_input!r:.80}"
        )
    noisy = [name for name, module in model.named_modules() if isinstance(module, LogNormalNoise)]
    if noisy:
        raise ValueError(f"model still has noise modules {noisy}; fold them first with bmrs.nn.fold.fold_noise")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    trace_input = _trace_input(example_input)
    batch_sizes = config.check_batch_sizes
    if all(batch == trace_input.shape[0] for batch in batch_sizes):
        batch_sizes = (*batch_sizes, trace_input.shape[0] + 1)
    was_training = model.training
    model.eval()
    try:
        _export(model, trace_input, partial, config)
        onnx.checker.check_model(str(partial), full_check=True)
        opset = _check_graph(onnx.load(str(partial)))
        max_abs_diff, largest_output = _parity(model, example_input, partial, batch_sizes, config)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        raise
    finally:
        model.train(was_training)
    return OnnxResult(
        path=path,
        max_abs_diff=max_abs_diff,
        largest_output=largest_output,
        opset=opset,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        file_bytes=path.stat().st_size,
        checked_batch_sizes=batch_sizes,
    )


def _trace_input(example_input: Tensor) -> Tensor:
    if example_input.shape[0] > 1:
        return example_input
    # Some torch.export versions specialise a size-1 dimension to a constant even when it is
    # declared dynamic, so a single-example batch is traced as two copies of it.
    return example_input.expand(2, *example_input.shape[1:]).contiguous()


def _export(model: nn.Module, trace_input: Tensor, target: Path, config: OnnxConfig) -> None:
    with torch.no_grad():
        output = model(trace_input)
    if not isinstance(output, Tensor):
        raise TypeError(f"export_onnx needs a model returning one logits tensor, got {type(output).__name__}")
    if config.dynamo:
        torch.onnx.export(
            model, (trace_input,), str(target),
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=config.opset,
            dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},),
            # Weights go inside the one file: external data would name the temporary file, and
            # the reference would break on rename.
            external_data=False, verbose=False,
        )  # fmt: skip
    else:
        torch.onnx.export(
            model, (trace_input,), str(target),
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=config.opset,
            dynamo=False, dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )  # fmt: skip


def _check_graph(proto: onnx.ModelProto) -> int:
    """Check names and a symbolic batch axis; return the file's default-domain opset."""
    inputs = [value.name for value in proto.graph.input]
    outputs = [value.name for value in proto.graph.output]
    if inputs != [INPUT_NAME] or outputs != [OUTPUT_NAME]:
        raise OnnxParityError(
            f"exported graph has inputs {inputs} and outputs {outputs}, expected [{INPUT_NAME!r}] and "
            f"[{OUTPUT_NAME!r}]; the model must take one tensor and return one tensor"
        )
    for value in (*proto.graph.input, *proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if not dims or dims[0].HasField("dim_value"):
            fixed = dims[0].dim_value if dims else "no"
            raise OnnxParityError(
                f"{value.name!r} has a fixed batch axis ({fixed}) in the exported graph; it must be symbolic"
            )
    return next(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx"))


def _parity(
    model: nn.Module, example_input: Tensor, onnx_path: Path, batch_sizes: tuple[int, ...], config: OnnxConfig
) -> tuple[float, float]:
    """Max abs difference between onnxruntime and PyTorch over ``batch_sizes``, and the largest
    absolute PyTorch output there."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    worst = largest = 0.0
    for batch in batch_sizes:
        x = torch.randn(batch, *example_input.shape[1:], generator=generator, dtype=example_input.dtype)
        with torch.no_grad():
            expected = model(x.to(example_input.device)).cpu().numpy()
        try:
            (actual,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
        except Exception as error:  # onnxruntime raises its own exception types for shape mismatches
            raise OnnxParityError(f"onnxruntime rejects a batch of {batch}: {error}") from error
        if actual.shape != expected.shape:
            raise OnnxParityError(
                f"onnxruntime returns shape {actual.shape} for a batch of {batch}, PyTorch {expected.shape}"
            )
        diff = float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64)), initial=0.0))
        scale = float(np.max(np.abs(expected.astype(np.float64)), initial=0.0))
        bound = config.tolerance + config.relative_tolerance * scale
        if not (math.isfinite(diff) and math.isfinite(scale)) or diff > bound:
            # float32 cannot carry such outputs to a few epsilons through cancelling sums; they come
            # from weights a far too large learning rate blew up, not from a faulty export.
            hint = (
                "outputs this large mean the model's weights blew up (training diverged: lower the learning rate)"
                if not math.isfinite(scale) or scale > DIVERGED_OUTPUT
                else "check for unsupported ops or raise the tolerances"
            )
            raise OnnxParityError(
                f"onnxruntime differs from PyTorch by {diff:.3g} (max abs, batch of {batch}, largest output "
                f"{scale:.3g}), more than the bound {bound:.3g} (tolerance {config.tolerance:.3g} + "
                f"relative_tolerance {config.relative_tolerance:.3g} x largest output); {hint}"
            )
        worst, largest = max(worst, diff), max(largest, scale)
    return worst, largest

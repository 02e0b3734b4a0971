"""Export a plain (folded, sliced) model to ONNX and prove that the file computes the same thing.

The file is only trusted after ``onnx.checker`` accepts it and onnxruntime reproduces the PyTorch
evaluation output, within a tolerance, at several batch sizes, including sizes the exporter never
traced: a batch axis that silently became static is the classic way an export "works" and then
fails in deployment. The file is written under a temporary name and renamed only once all of that
passed, so a file at ``path`` always is a verified export. Tensor names, float16 and metadata, the
options inference servers care about, are in ``export.onnx_options``.
"""
from __future__ import annotations

import copy
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
from export.onnx_options import check_tensor_name, fp16_session_problem, session_io, write_metadata
from export.slicing import check_round_to

__all__ = ["OnnxConfig", "OnnxParityError", "OnnxResult", "export_onnx", "max_opset", "write_metadata"]

# The default tensor names (OnnxConfig.input_name / output_name).
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

    ``opset``: the ONNX opset written (default 18; the ``torch.export``-based exporter writes 18 up
    to the installed onnx's newest, the TorchScript one 9 up to its own limit: anything else is
    refused here, since either exporter would otherwise quietly write another opset).
    ``dynamo=False`` selects the legacy TorchScript exporter (deprecated by PyTorch) instead of the
    ``torch.export``-based one.

    Over random inputs at every size in ``check_batch_sizes``, the max abs difference between
    onnxruntime and PyTorch outputs must stay within ``tolerance + relative_tolerance * scale``,
    ``scale`` being the largest absolute output of that batch. float32 rounding grows with the
    size of the terms summed into a logit, not with the logit itself (a logit near 0 can be a sum
    of hundreds), so the relative part scales with the batch's largest output rather than each
    element's.

    ``input_name`` / ``output_name``: the graph's tensor names, plain identifiers (an inference
    server's config names them). ``fp16``: export the model in half precision (weights, input and
    output float16); the file is still checked against the float32 model, the one that was
    evaluated, fed the same data (rounded to float16 for the file), within ``fp16_tolerance +
    fp16_relative_tolerance * scale``. float16 keeps 11 significant bits (unit roundoff 4.9e-4)
    and the file rounds its input, every weight (BatchNorm folded in) and its output to it, so the
    error is a few roundoffs per layer of the output's scale. Measured on random normal inputs: a
    pruned LeNet5 and a 3-layer MLP up to 7e-4 x their largest logit, a trained LeNet5 5e-4 x
    (0.07 at logits of 141; on 2,000 real Fashion-MNIST test images 0.017 at 34), ResNet-20 with
    randomised BatchNorm statistics 1.6e-3 x, ResNet-56 2.0e-3 x. Hence the defaults:
    ``fp16_relative_tolerance`` 1e-2, five times the deepest of them and still far below the
    order-one differences of a wrong export; ``fp16_tolerance`` 1e-3, about one float16 step at
    1.0, for logits near zero. onnxruntime's CPU provider must run the file: it runs every op of
    these graphs (Conv, Gemm, Relu, MaxPool, BatchNormalization, Add, ReduceMean) in float32
    between Casts it inserts (onnxruntime 1.32, x86-64; seen in its optimised graph), so on CPU a float16 file is half the size, not faster, and computes in float32 from
    rounded weights; a graph it still refuses fails the export with ``OnnxParityError``.

    ``round_to`` (None or 1: off; e.g. 8 or 16) is a slicing setting kept here so that the flow's
    ``export`` section stays one place: ``export.slicing.slice_model`` keeps every sliced layer's
    width a multiple of it (or the layer's full width), since kernels are often faster on such widths.
    """

    opset: int = 18
    tolerance: float = 1e-4
    # A few float32 epsilons (1.2e-7) per unit of logit: a pruned LeNet5 with logits of ~460 on
    # random inputs differs by 2e-4 between the two runtimes, 4.6e-7 of its largest logit.
    relative_tolerance: float = 1e-5
    check_batch_sizes: tuple[int, ...] = (1, 7, 64)
    dynamo: bool = True
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    fp16: bool = False
    fp16_tolerance: float = 1e-3
    fp16_relative_tolerance: float = 1e-2
    round_to: int | None = None

    def __post_init__(self) -> None:
        for name in ("dynamo", "fp16"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
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
        for name in ("tolerance", "relative_tolerance", "fp16_tolerance", "fp16_relative_tolerance"):
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
        check_tensor_name("input_name", self.input_name)
        check_tensor_name("output_name", self.output_name)
        if self.input_name == self.output_name:
            raise ValueError(f"input_name and output_name are both {self.input_name!r}; give the two tensors different names")
        check_round_to(self.round_to)

    def parity_bound(self, scale: float, *, fp16: bool) -> float:
        """The largest max abs difference allowed where the reference's largest output is ``scale``."""
        if fp16:
            return self.fp16_tolerance + self.fp16_relative_tolerance * scale
        return self.tolerance + self.relative_tolerance * scale

    def describe_bound(self, *, fp16: bool) -> str:
        """The settings ``parity_bound`` uses, for an error message."""
        prefix = "fp16_" if fp16 else ""
        tolerance, relative = (self.fp16_tolerance, self.fp16_relative_tolerance) if fp16 else (self.tolerance, self.relative_tolerance)
        return f"{prefix}tolerance {tolerance:.3g} + {prefix}relative_tolerance {relative:.3g}"



@dataclass(frozen=True)
class OnnxResult:
    """A verified export. ``opset`` is the default-domain opset recorded in the file;
    ``largest_output`` is the largest absolute PyTorch output over the parity checks, the scale
    ``max_abs_diff`` is judged against. ``fp16``: the file computes in float16 (its input and
    output are float16), ``max_abs_diff`` measured against the float32 model."""

    path: Path
    max_abs_diff: float
    largest_output: float
    opset: int
    input_name: str
    output_name: str
    file_bytes: int
    checked_batch_sizes: tuple[int, ...]
    fp16: bool = False

    def summary(self) -> dict[str, float | int | str]:
        """What a report records of the export."""
        return {
            "path": str(self.path), "max_abs_diff": self.max_abs_diff, "largest_output": self.largest_output,
            "bytes": self.file_bytes, "dtype": "float16" if self.fp16 else "float32",
        }  # fmt: skip


def export_onnx(
    model: nn.Module, example_input: Tensor, path: str | os.PathLike, config: OnnxConfig = OnnxConfig()
) -> OnnxResult:
    """Export ``model`` (evaluation mode) to ``path`` with a dynamic batch axis, then verify it.

    Input ``config.input_name`` and output ``config.output_name`` (default "input", "logits") have
    a symbolic axis 0; ``example_input`` fixes every other dimension. With ``config.fp16`` a
    float16 copy of ``model`` is exported and checked against ``model`` itself. Parity is checked
    at ``config.check_batch_sizes``, plus one size the exporter did not trace if none of those
    differs from it (``OnnxResult.checked_batch_sizes`` lists what was checked). Raises
    ``OnnxParityError`` when onnxruntime's CPU provider cannot load a float16 file, rejects a batch size
    or differs from PyTorch by more than ``config.parity_bound``; on any failure nothing is left at
    ``path`` (a stale file from an earlier run is removed too, since it would pass for this run's
    result). The model's train/eval mode is restored afterwards; ``model`` itself is never cast.
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
        if config.fp16:
            # A copy: the caller's model is the float32 reference the file is judged against.
            _export(copy.deepcopy(model).half(), trace_input.half(), partial, config)
        else:
            _export(model, trace_input, partial, config)
        onnx.checker.check_model(str(partial), full_check=True)
        opset = _check_graph(onnx.load(str(partial)), config)
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
        input_name=config.input_name,
        output_name=config.output_name,
        file_bytes=path.stat().st_size,
        checked_batch_sizes=batch_sizes,
        fp16=config.fp16,
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
    names = {"input_names": [config.input_name], "output_names": [config.output_name], "opset_version": config.opset}
    if config.dynamo:
        torch.onnx.export(
            model, (trace_input,), str(target), **names,
            dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},),
            # Weights go inside the one file: external data would name the temporary file, and
            # the reference would break on rename.
            external_data=False, verbose=False,
        )  # fmt: skip
    else:
        torch.onnx.export(
            model, (trace_input,), str(target), **names,
            dynamo=False, dynamic_axes={config.input_name: {0: "batch"}, config.output_name: {0: "batch"}},
        )  # fmt: skip


def _check_graph(proto: onnx.ModelProto, config: OnnxConfig) -> int:
    """Check names, element types and a symbolic batch axis; return the file's default-domain opset."""
    inputs = [value.name for value in proto.graph.input]
    outputs = [value.name for value in proto.graph.output]
    if inputs != [config.input_name] or outputs != [config.output_name]:
        raise OnnxParityError(
            f"exported graph has inputs {inputs} and outputs {outputs}, expected [{config.input_name!r}] and "
            f"[{config.output_name!r}]; the model must take one tensor and return one tensor"
        )
    expected_type = onnx.TensorProto.FLOAT16 if config.fp16 else onnx.TensorProto.FLOAT
    for value in (*proto.graph.input, *proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if not dims or dims[0].HasField("dim_value"):
            fixed = dims[0].dim_value if dims else "no"
            raise OnnxParityError(
                f"{value.name!r} has a fixed batch axis ({fixed}) in the exported graph; it must be symbolic"
            )
        if value.type.tensor_type.elem_type != expected_type:
            found = onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type)
            raise OnnxParityError(
                f"{value.name!r} is {found} in the exported graph, expected {onnx.TensorProto.DataType.Name(expected_type)}; "
                "the model must compute in its parameters' dtype (float32, or float16 with fp16)"
            )
    return next(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx"))


def _parity(
    model: nn.Module, example_input: Tensor, onnx_path: Path, batch_sizes: tuple[int, ...], config: OnnxConfig
) -> tuple[float, float]:
    """Max abs difference between onnxruntime and PyTorch over ``batch_sizes``, and the largest
    absolute PyTorch output there. A float16 file is fed the same inputs rounded to float16."""
    try:
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types for a graph it cannot run
        if config.fp16:
            raise OnnxParityError(fp16_session_problem(error)) from error
        raise
    io = session_io(session, onnx_path.name)
    generator = torch.Generator().manual_seed(0)
    worst = largest = 0.0
    for batch in batch_sizes:
        x = torch.randn(batch, *example_input.shape[1:], generator=generator, dtype=example_input.dtype)
        with torch.no_grad():
            expected = model(x.to(example_input.device)).cpu().numpy()
        try:
            (actual,) = session.run([io.output_name], io.feed(x.numpy()))
        except Exception as error:  # onnxruntime raises its own exception types for shape mismatches
            raise OnnxParityError(f"onnxruntime rejects a batch of {batch}: {error}") from error
        if actual.shape != expected.shape:
            raise OnnxParityError(
                f"onnxruntime returns shape {actual.shape} for a batch of {batch}, PyTorch {expected.shape}"
            )
        diff = float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64)), initial=0.0))
        scale = float(np.max(np.abs(expected.astype(np.float64)), initial=0.0))
        bound = config.parity_bound(scale, fp16=config.fp16)
        if not (math.isfinite(diff) and math.isfinite(scale)) or diff > bound:
            raise OnnxParityError(
                f"onnxruntime differs from PyTorch by {diff:.3g} (max abs, batch of {batch}, largest output "
                f"{scale:.3g}), more than the bound {bound:.3g} ({config.describe_bound(fp16=config.fp16)} x largest "
                f"output); {_parity_hint(scale, actual, config)}"
            )
        worst, largest = max(worst, diff), max(largest, scale)
    return worst, largest


def _parity_hint(scale: float, actual: np.ndarray, config: OnnxConfig) -> str:
    if not math.isfinite(scale) or scale > DIVERGED_OUTPUT:
        # float32 cannot carry such outputs to a few epsilons through cancelling sums; they come
        # from weights a far too large learning rate blew up, not from a faulty export.
        return "outputs this large mean the model's weights blew up (training diverged: lower the learning rate)"
    if config.fp16 and not np.all(np.isfinite(actual)):
        return f"float16 overflows beyond {float(np.finfo(np.float16).max):.0f} inside this model: export it in float32 (fp16: false)"
    if config.fp16:
        return "float16 rounding is too coarse for this model: raise fp16_relative_tolerance, or export in float32 (fp16: false)"
    return "check for unsupported ops or raise the tolerances"

"""Judge an exported ONNX file on real data, through ONNX Runtime's CPU provider as it is deployed.

``export_onnx`` proves that a file computes what the module it was exported from computes, on
random inputs. That module is already a transformation (folded, sliced) of the model a run trained
and evaluated, so a transformation that is wrong would pass it. ``check_data_parity`` compares the
file with any reference module, typically the model whose accuracy is reported, on real examples;
``onnx_metrics`` measures the file itself, so the accuracy a report states is that of what ships.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn

from bmrs.data import Split
from bmrs.train.metrics import ClassificationMetrics, classification_metrics
from export.onnx_export import DIVERGED_OUTPUT, OnnxConfig, OnnxParityError
from export.onnx_options import session_io

PARITY_BATCH = 256


class EndToEndParityError(OnnxParityError):
    """An ONNX file does not compute, on real examples, what the model it stands for computes.
    ``diverged``: the reference's outputs are so large (or not finite) that its weights blew up in
    training, rather than the file being wrong."""

    def __init__(self, message: str, *, diverged: bool = False) -> None:
        super().__init__(message)
        self.diverged = diverged


@dataclass(frozen=True)
class DataParity:
    """How far the ONNX file's logits are from the reference's on ``examples`` real inputs. The
    examples count as one batch for the bound: ``bound = tolerance + relative_tolerance *
    largest_output`` (``fp16_tolerance`` and ``fp16_relative_tolerance`` for a float16 file),
    ``largest_output`` being the reference's largest absolute logit there."""

    max_abs_diff: float
    bound: float
    largest_output: float
    examples: int

    def summary(self) -> dict[str, float | int]:
        return {
            "max_abs_diff": self.max_abs_diff, "bound": self.bound,
            "largest_output": self.largest_output, "examples": self.examples,
        }  # fmt: skip


class OnnxModule(nn.Module):
    """An ONNX file behind the ``nn.Module`` call interface, so that the metric code a report uses
    for PyTorch models measures the file itself. CPU tensors in, float32 CPU tensors out; no
    gradients. The file's own input name and dtype are used: a float16 file gets its input rounded
    to float16, as a server would feed it, and its float16 logits widened exactly to float32."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        self.path = Path(path)
        self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        self.io = session_io(self.session, self.path.name)

    @property
    def fp16(self) -> bool:
        return self.io.input_dtype == np.float16

    def forward(self, x: Tensor) -> Tensor:
        (logits,) = self.session.run([self.io.output_name], self.io.feed(x.detach().cpu().numpy()))
        return torch.from_numpy(np.asarray(logits, dtype=np.float32))


def onnx_metrics(path: str | os.PathLike, split: Split) -> ClassificationMetrics:
    """Accuracy, NLL and ECE of the ONNX file at ``path`` over every example of ``split``."""
    return classification_metrics(OnnxModule(path), split)


def check_data_parity(
    reference: nn.Module, path: str | os.PathLike, images: Tensor, config: OnnxConfig, *, describe: str
) -> DataParity:
    """Compare the ONNX file at ``path`` with ``reference`` (run in evaluation mode) on ``images``.

    Raises ``EndToEndParityError`` when the max abs difference of the logits exceeds ``config``'s
    bound (see ``DataParity``; its fp16 tolerances when the file is float16) or either side is not finite; ``describe`` names the pair compared
    in that message (e.g. "model.onnx against the masked model"). ``reference``'s train/eval mode
    is restored afterwards.
    """
    if not isinstance(images, Tensor) or images.dim() < 1 or images.shape[0] < 1:
        raise ValueError(f"images must be a non-empty batch tensor, got {images!r:.80}")
    onnx_model = OnnxModule(path)
    was_training = reference.training
    reference.eval()
    worst = largest = 0.0
    try:
        with torch.no_grad():
            for start in range(0, images.shape[0], PARITY_BATCH):
                batch = images[start : start + PARITY_BATCH]
                expected = reference(batch).detach().cpu().double()
                actual = onnx_model(batch).double()
                if actual.shape != expected.shape:
                    raise EndToEndParityError(
                        f"{describe}: the ONNX model returns shape {tuple(actual.shape)}, the reference "
                        f"{tuple(expected.shape)}, for the same {batch.shape[0]} real examples"
                    )
                worst = max(worst, float((actual - expected).abs().max()))
                largest = max(largest, float(expected.abs().max()))
    finally:
        reference.train(was_training)
    bound = config.parity_bound(largest, fp16=onnx_model.fp16)
    examples = int(images.shape[0])
    if not (math.isfinite(worst) and math.isfinite(largest)) or worst > bound:
        diverged = not math.isfinite(largest) or largest > DIVERGED_OUTPUT
        cause = (
            "logits this large mean the model's weights blew up in training (lower the learning rate)"
            if diverged
            else "so the exported file does not compute the model that was trained and evaluated"
        )
        raise EndToEndParityError(
            f"{describe}: the logits differ by {worst:.3g} (max abs over {examples} real test examples, "
            f"largest logit {largest:.3g}), more than the parity bound {bound:.3g} "
            f"({config.describe_bound(fp16=onnx_model.fp16)} x largest logit); {cause}",
            diverged=diverged,
        )
    return DataParity(max_abs_diff=worst, bound=bound, largest_output=largest, examples=examples)

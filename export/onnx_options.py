"""What users of inference servers expect of an exported file beyond its graph: tensor names they
chose, a float16 variant, and metadata saying where the file came from.

Everything that feeds an exported file reads its input name and dtype from the file itself
(``session_io``), so a renamed or float16 export verifies and benchmarks like the default one.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

# pyproject.toml's [project] name: the distribution whose version a file records.
PROJECT_DISTRIBUTION = "bmrs-pipeline"
PRODUCER_NAME = "bmrs"
METADATA_PREFIX = "bmrs."
# Inference servers address tensors by name in their configs and requests (Triton's config.pbtxt,
# KServe's v2 protocol), where a plain identifier is the one spelling every one of them accepts.
TENSOR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_TENSOR_NAME = 128
ONNX_TO_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def check_tensor_name(setting: str, value: object) -> None:
    """Refuse a tensor name that is not a plain identifier (letters, digits, underscores)."""
    if not isinstance(value, str):
        raise TypeError(f"{setting} must be a string, got {value!r}")
    if not TENSOR_NAME.fullmatch(value) or len(value) > MAX_TENSOR_NAME:
        raise ValueError(
            f"{setting} {value!r} is not a plain identifier; use letters, digits and underscores, not starting "
            f"with a digit, at most {MAX_TENSOR_NAME} characters (e.g. 'input', 'INPUT__0')"
        )


@dataclass(frozen=True)
class SessionIO:
    """The single input and output of an exported file, as onnxruntime reports them."""

    input_name: str
    output_name: str
    input_dtype: type[np.generic]
    input_shape: tuple[int | str | None, ...]

    def feed(self, array: np.ndarray) -> dict[str, np.ndarray]:
        """``array`` as the file's input (cast to its dtype: float32 data for a float16 file)."""
        return {self.input_name: np.ascontiguousarray(array, dtype=self.input_dtype)}


def session_io(session: ort.InferenceSession, describe: str) -> SessionIO:
    """The input and output of ``session``, which must have exactly one of each, the input a float
    tensor; ``describe`` names the file in the error."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(
            f"{describe} has inputs {[i.name for i in inputs]} and outputs {[o.name for o in outputs]}; "
            "a classifier export has exactly one of each (export it with export.onnx_export.export_onnx)"
        )
    spec = inputs[0]
    if spec.type not in ONNX_TO_NUMPY:
        raise ValueError(
            f"{describe}'s input {spec.name!r} is {spec.type}; only {sorted(ONNX_TO_NUMPY)} inputs are fed here"
        )
    return SessionIO(spec.name, outputs[0].name, ONNX_TO_NUMPY[spec.type], tuple(spec.shape))


def project_version() -> str:
    """The installed version of this project (``bmrs-pipeline``); "unknown" when it is run from a
    source tree that was never installed."""
    try:
        return importlib.metadata.version(PROJECT_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def write_metadata(path: str | os.PathLike, props: Mapping[str, str]) -> None:
    """Set ``props`` as ``metadata_props`` of the ONNX file at ``path`` (a key already there is
    replaced, others are kept), producer_name "bmrs" and producer_version ``project_version()``.

    The graph is untouched, which is checked: the rewritten file's graph serialises to the same
    bytes before it replaces ``path`` (temporary file, then rename: a reader never sees half a file).
    ``model_version`` is left alone: ONNX means it as the deployer's integer version of the model
    in their registry, which this project does not know.
    """
    path = Path(path)
    if not isinstance(props, Mapping):
        raise TypeError(f"props must map metadata keys to strings, got {type(props).__name__}")
    bad = [(key, value) for key, value in props.items() if not (isinstance(key, str) and key and isinstance(value, str))]
    if bad:
        raise TypeError(f"metadata must map non-empty string keys to string values; {bad[0]!r} is not; str() the value")
    if not path.is_file():
        raise FileNotFoundError(f"no ONNX file at {path}; export it first")
    proto = onnx.load(str(path))
    graph = proto.graph.SerializeToString(deterministic=True)
    merged = {entry.key: entry.value for entry in proto.metadata_props}
    merged.update(props)
    del proto.metadata_props[:]
    for key, value in merged.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = PRODUCER_NAME
    proto.producer_version = project_version()
    partial = path.with_name(f".{path.name}.metadata.partial")
    try:
        onnx.save(proto, str(partial))
        if onnx.load(str(partial)).graph.SerializeToString(deterministic=True) != graph:
            raise RuntimeError(f"rewriting the metadata of {path} changed its graph; the file was left as it was")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``metadata_props`` of the ONNX file at ``path``."""
    return {entry.key: entry.value for entry in onnx.load(str(path), load_external_data=False).metadata_props}


def fp16_session_problem(error: BaseException) -> str:
    """One line for an onnxruntime refusal to load a float16 graph on its CPU provider."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return (
        f"onnxruntime's CPU provider cannot run this model's float16 graph ({first}); export it in float32 "
        "(export.fp16: false) and convert it for the target runtime there, or replace the layer it names"
    )


def run_metadata(flow: str, input_shape: tuple[int, ...], props: Mapping[str, object]) -> dict[str, str]:
    """A run's metadata for its exported files: ``props`` (None values left out, others str()'d)
    and the project version, flow name and input shape, every key prefixed ``bmrs.``. The input
    shape is JSON with "batch" for the dynamic axis, e.g. ``["batch", 1, 28, 28]``."""
    common = {"version": project_version(), "flow": flow, "input_shape": json.dumps(["batch", *input_shape])}
    return {f"{METADATA_PREFIX}{key}": str(value) for key, value in {**props, **common}.items() if value is not None}

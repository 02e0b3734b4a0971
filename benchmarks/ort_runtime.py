"""ONNX Runtime plumbing shared by the latency and energy benchmarks: providers, sessions, inputs,
and a description of the machine the numbers came from."""

from __future__ import annotations

import enum
import os
import platform
from pathlib import Path

import numpy as np
import onnxruntime as ort


class Provider(enum.Enum):
    """ONNX Runtime execution providers this benchmark knows how to drive."""

    CPU = "CPUExecutionProvider"
    CUDA = "CUDAExecutionProvider"


def available_providers() -> list[Provider]:
    """Providers of this enum that the installed onnxruntime build offers."""
    offered = set(ort.get_available_providers())
    return [p for p in Provider if p.value in offered]


def _as_provider(value: object) -> Provider:
    if isinstance(value, Provider):
        return value
    try:
        return Provider(value)
    except ValueError:
        valid = ", ".join(f"Provider.{p.name} ({p.value!r})" for p in Provider)
        raise ValueError(f"Unknown provider {value!r}; use one of {valid}.") from None


def open_session(
    model_path: Path,
    provider: Provider,
    *,
    intra_op_threads: int | None = None,
    thread_spinning: bool = False,
) -> ort.InferenceSession:
    """Inference session pinned to `provider`; shared with benchmarks.energy."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if intra_op_threads is not None:
        options.intra_op_num_threads = intra_op_threads
    options.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if thread_spinning else "0"
    )
    # CPU is listed as fallback for ops the GPU provider lacks, as ORT expects.
    order = [provider.value] if provider is Provider.CPU else [provider.value, Provider.CPU.value]
    session = ort.InferenceSession(str(model_path), sess_options=options, providers=order)
    # ORT silently falls back to CPU when e.g. CUDA libraries fail to load;
    # timing that as "CUDA" would be a wrong number, so refuse it.
    if session.get_providers()[0] != provider.value:
        raise RuntimeError(
            f"{provider.value} was requested for {model_path} but ORT activated "
            f"{session.get_providers()}; check the CUDA/cuDNN installation that "
            "onnxruntime-gpu needs, or benchmark with Provider.CPU."
        )
    return session


# Input types a benchmark can feed: its float32 data, cast once (before any timing) for float16 files.
FEEDABLE_INPUTS = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def input_feed(name: str, session: ort.InferenceSession, x: np.ndarray) -> dict[str, np.ndarray]:
    """The feed of `x` to the session's only input, under the file's own input name and cast to its
    dtype (float32, or float16 for an export with fp16), after checking the input accepts `x.shape`.
    Build it outside the timed calls: the cast is not part of the model's latency."""
    spec = _single_input(name, session, tuple(x.shape), accepted=FEEDABLE_INPUTS)
    return {spec.name: np.ascontiguousarray(x, dtype=FEEDABLE_INPUTS[spec.type])}


def single_float_input(name: str, session: ort.InferenceSession, shape: tuple[int, ...]) -> str:
    """Name of the session's only input after checking it accepts `shape` as float32."""
    return _single_input(name, session, shape, accepted={"tensor(float)": np.float32}).name


def _single_input(name: str, session: ort.InferenceSession, shape: tuple[int, ...], *, accepted: dict) -> ort.NodeArg:
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ValueError(
            f"Model {name!r} has {len(inputs)} inputs ({[i.name for i in inputs]}); "
            "the benchmark feeds exactly one float tensor, export a single-input model."
        )
    spec = inputs[0]
    if spec.type not in accepted:
        fix = (
            "feed it through benchmarks.ort_runtime.input_feed, which casts the data to the file's dtype"
            if spec.type in FEEDABLE_INPUTS
            else "export it with a float32 (or, with export.fp16, float16) input"
        )
        raise ValueError(f"Model {name!r} input {spec.name!r} is {spec.type}; {fix}.")
    # Symbolic (str) or unknown (None) dims accept any size; ints must match.
    if len(spec.shape) != len(shape) or any(
        isinstance(declared, int) and declared != fed for declared, fed in zip(spec.shape, shape)
    ):
        raise ValueError(
            f"Model {name!r} input {spec.name!r} has shape {spec.shape} but the benchmark feeds {shape}; "
            "give input_shape without the batch axis and export the model with a dynamic batch axis "
            "(or benchmark only the batch size it was exported with)."
        )
    return spec


def require_providers(requested: tuple[Provider, ...]) -> None:
    """Raise ValueError naming what is installed if any requested provider is missing."""
    offered = ort.get_available_providers()
    missing = [p.value for p in requested if p.value not in offered]
    if missing:
        fix = (
            "install onnxruntime-gpu instead of onnxruntime (pip uninstall onnxruntime && "
            "pip install onnxruntime-gpu) on a machine with CUDA"
            if Provider.CUDA.value in missing
            else "install an onnxruntime build that ships it"
        )
        raise ValueError(
            f"Requested provider(s) {missing} not available in onnxruntime {ort.__version__}; "
            f"available: {offered}. Fix: {fix}, or request only available providers."
        )


def describe_machine() -> dict[str, object]:
    """Where the numbers came from; JSON-safe."""
    # platform.processor() is empty on most Linux systems; /proc/cpuinfo is not.
    processor = platform.processor()
    lines = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines() if Path("/proc/cpuinfo").is_file() else []
    if not processor:
        processor = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")
    flags = set(next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), []))
    return {
        # The widest vector extension the kernels may pick: the same VM name can sit on hosts with
        # and without AVX-512, and latencies (and float results) differ between them.
        "vector_isa": "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else ("unknown" if not flags else "older than AVX2"),
        "platform": platform.platform(),
        "processor": processor or platform.machine(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        # CPUs this process may actually use (cgroups, taskset) can be fewer.
        "usable_cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python_version": platform.python_version(),
    }

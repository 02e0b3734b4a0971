"""PyTorch eager plumbing for the latency benchmark: devices, what is available, what the numbers
ran on, and one model's timed call. The counterpart of ``benchmarks.ort_runtime``.

torch is imported inside the functions: the ONNX Runtime benchmarks (and the flow's configuration,
which names ``TorchDevice``) load this module without paying for torch's import.
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn


class TorchDevice(enum.Enum):
    """Devices PyTorch eager is timed on; the values key the report next to ORT's providers."""

    CPU = "torch-cpu"
    CUDA = "torch-cuda"

    @property
    def torch_name(self) -> str:
        return self.name.lower()


def as_torch_device(value: object) -> TorchDevice:
    if isinstance(value, TorchDevice):
        return value
    for device in TorchDevice:
        # "torch-cuda", or the name torch itself uses ("cuda", "CUDA").
        if value == device.value or (isinstance(value, str) and value.lower() == device.torch_name):
            return device
    valid = ", ".join(f"TorchDevice.{d.name} ({d.value!r})" for d in TorchDevice)
    raise ValueError(f"Unknown torch device {value!r}; use one of {valid}.")


def available_torch_devices() -> tuple[TorchDevice, ...]:
    """CPU, plus CUDA when ``torch.cuda.is_available()``: the default when no devices are named."""
    import torch

    return (TorchDevice.CPU, TorchDevice.CUDA) if torch.cuda.is_available() else (TorchDevice.CPU,)


def require_torch_devices(requested: tuple[TorchDevice, ...]) -> None:
    """Raise ValueError naming each requested device torch cannot use here, and the fix."""
    import torch

    missing = [d.value for d in requested if d not in available_torch_devices()]
    if missing:
        raise ValueError(
            f"Requested torch device(s) {missing} not available: torch {torch.__version__} (built for CUDA "
            f"{torch.version.cuda}) reports torch.cuda.is_available() == False. Fix: run on a machine with an "
            "NVIDIA GPU and a CUDA build of torch, or time only the CPU (torch_devices=(TorchDevice.CPU,), "
            "--set latency.torch_devices=[cpu]), or leave torch_devices unset (CPU, plus CUDA when available)."
        )


def describe_torch(devices: tuple[TorchDevice, ...], processor: str) -> dict[str, object]:
    """The torch build, its thread counts as timed, and the name of every device timed; JSON-safe."""
    import torch

    names = {
        d.value: torch.cuda.get_device_name(torch.cuda.current_device()) if d is TorchDevice.CUDA else processor
        for d in devices
    }
    return {
        "torch_version": torch.__version__,
        "intra_op_threads": torch.get_num_threads(),
        "inter_op_threads": torch.get_num_interop_threads(),
        "cuda_version": torch.version.cuda,
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "devices": names,
    }


def describe_module(model: nn.Module) -> str:
    """What stands in the report where ORT's reports give a file path."""
    return f"{type(model).__name__} ({sum(p.numel() for p in model.parameters())} parameters)"


def on_device(models: Mapping[str, nn.Module], device: TorchDevice) -> dict[str, nn.Module]:
    """Copies of ``models`` in evaluation mode on ``device``: the caller's modules keep their device
    and mode (``Module.to`` and ``eval`` act in place)."""
    return {name: copy.deepcopy(model).eval().to(device.torch_name) for name, model in models.items()}


def timed_call(model: nn.Module, x: torch.Tensor, device: TorchDevice) -> Callable[[], object]:
    """The call whose wall time is one latency sample. ``x`` is already on ``device``, so the
    host-to-device copy of the input is never timed. CUDA runs asynchronously: the call waits for
    the GPU to finish (``torch.cuda.synchronize``) before the clock stops, and since every call and
    the warm-up end synchronised, nothing of an earlier run is still queued when the clock starts."""
    if device is TorchDevice.CUDA:
        import torch

        def run() -> object:
            out = model(x)
            torch.cuda.synchronize()
            return out

        return run
    return lambda: model(x)


def synchronize(device: TorchDevice) -> None:
    if device is TorchDevice.CUDA:
        import torch

        torch.cuda.synchronize()

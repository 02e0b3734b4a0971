"""Device names in settings (``train.device``, ``sparsify.device``): the name is checked when a
config is made, on any machine, so that a config written for a GPU still loads where there is none
(to report on its runs, say); whether this machine has the device is checked when work starts."""
from __future__ import annotations

import torch


def check_device_name(value: object, setting: str) -> None:
    """Raise ``TypeError``/``ValueError`` naming ``setting`` unless ``value`` names a CPU or CUDA device."""
    if not isinstance(value, str):
        raise TypeError(f"{setting} must be a device name such as 'cpu' or 'cuda', got {value!r}")
    try:
        device = torch.device(value)
    except RuntimeError:
        raise ValueError(f"{setting} {value!r} is not a device name; use 'cpu', 'cuda' or 'cuda:1'") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{setting} {value!r} is a {device.type} device; training here runs on 'cpu' or 'cuda'")


def available_device(value: str, setting: str) -> torch.device:
    """``torch.device(value)``, or a ``ValueError`` naming ``setting`` when this machine lacks it."""
    check_device_name(value, setting)
    device = torch.device(value)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{setting} is {value!r} but this machine has no CUDA device (or torch was built without CUDA); set it to 'cpu'")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"{setting} is {value!r} but this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued work, so that a wall-clock time covers it (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def module_device(module: torch.nn.Module) -> torch.device:
    """Where ``module``'s first parameter (or buffer) lives; the CPU for a module with neither."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")

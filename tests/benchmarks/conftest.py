"""Two tiny real ONNX models, exported once per test session.

"pruned" is the same MLP with a narrower hidden layer, as structured pruning
would leave it; both keep a dynamic batch axis like the production export.
"""

from __future__ import annotations

from pathlib import Path

import socket

import pytest
import torch

IN_FEATURES = 32


def _export_mlp(path: Path, hidden: int) -> Path:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(IN_FEATURES, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10)
    ).eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(
        model,
        (torch.randn(2, IN_FEATURES),),
        str(path),
        dynamo=True,
        dynamic_shapes=({0: batch},),
        input_names=["x"],
        output_names=["logits"],
        verbose=False,
    )
    return path


@pytest.fixture(scope="session")
def onnx_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx_models")
    return {
        "dense": _export_mlp(root / "dense.onnx", hidden=64),
        "pruned": _export_mlp(root / "pruned.onnx", hidden=16),
    }


@pytest.fixture(scope="session")
def input_shape() -> tuple[int, ...]:
    return (IN_FEATURES,)


@pytest.fixture
def no_network(monkeypatch):
    """Record and refuse every connection or DNS lookup attempt."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", lambda self, addr: refuse(addr))
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts

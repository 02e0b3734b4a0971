"""``export.sparse``: CSR bytes counted exactly, the dense-with-zeros file verified and measured."""
from __future__ import annotations

import zlib

import pytest
import torch
from torch import nn

from bmrs.sparsify import weight_sparsity
from export.onnx_export import OnnxConfig
from export.sparse import csr_bytes, deflate_bytes, layer_sparsity, sparse_export

FAST = OnnxConfig(check_batch_sizes=(1, 3))


def test_csr_bytes_of_a_linear_weight() -> None:
    weight = torch.tensor([[0.0, 1.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0], [3.0, 0.0, 4.0, 5.0]])
    # 5 nonzeros: 5 float32 values + 5 int32 column indices, and 3 + 1 int32 row pointers.
    assert csr_bytes(weight) == 5 * 4 + 5 * 4 + 4 * 4 == 56
    assert csr_bytes(torch.zeros(3, 4)) == 4 * 4  # only the row pointers
    assert csr_bytes(torch.ones(3, 4)) == 12 * 8 + 16
    assert csr_bytes(weight.half()) == 5 * 2 + 5 * 4 + 16  # values in the weight's own dtype


def test_csr_bytes_flattens_a_conv_kernel_per_output_channel() -> None:
    weight = torch.zeros(3, 2, 2, 2)  # rows of 2 * 2 * 2 = 8 taps
    weight[0, 0, 0, 0] = weight[0, 1, 1, 1] = weight[2, 1, 0, 1] = 1.0
    assert csr_bytes(weight) == 3 * 8 + (3 + 1) * 4 == 40


def test_csr_bytes_refuses_what_is_no_matrix() -> None:
    with pytest.raises(TypeError, match="takes a weight tensor"):
        csr_bytes([[1.0]])
    with pytest.raises(ValueError, match="at least one dimension"):
        csr_bytes(torch.tensor(1.0))


class Shared(nn.Module):
    """A conv, then one Linear used twice: the shared weight is one matrix, counted once."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)  # weight (2, 1, 3, 3): rows of 9
        self.hidden = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = torch.relu(self.conv(x)).flatten(1)  # (N, 2 * 2 * 2)
        return self.head(torch.relu(self.hidden(torch.relu(self.hidden(x)))))


def sparse_model() -> Shared:
    torch.manual_seed(0)
    model = Shared().eval()
    with torch.no_grad():
        model.conv.weight[0] = 0.0  # one whole filter: 9 zeros
        model.conv.weight[1, 0, 0] = 0.0  # and a row of 3 of the other
        model.hidden.weight.mul_(torch.eye(8))  # a diagonal: 56 zeros
        model.head.weight[:, :4] = 0.0  # 12 zeros
    return model


def test_layer_sparsity_counts_each_weight_once() -> None:
    layers = {layer.name: layer for layer in layer_sparsity(sparse_model())}
    assert list(layers) == ["conv", "hidden", "head"]
    assert (layers["conv"].weights, layers["conv"].nonzero, layers["conv"].csr_bytes) == (18, 6, 6 * 8 + 3 * 4)
    assert (layers["hidden"].nonzero, layers["hidden"].csr_bytes, layers["hidden"].dense_bytes) == (8, 8 * 8 + 9 * 4, 256)
    assert (layers["head"].nonzero, layers["head"].csr_bytes) == (12, 12 * 8 + 4 * 4)
    assert layers["hidden"].sparsity == pytest.approx(56 / 64)


def test_sparse_export_verifies_the_file_and_reports_exact_sizes(tmp_path) -> None:
    model = sparse_model()
    x = torch.randn(2, 1, 4, 4)
    result = sparse_export(model, x, tmp_path / "sparse.onnx", FAST)
    assert result.onnx.path.is_file() and result.onnx.max_abs_diff <= 1e-4
    assert result.onnx_bytes == result.onnx.file_bytes == (tmp_path / "sparse.onnx").stat().st_size
    assert result.deflate_bytes == len(zlib.compress((tmp_path / "sparse.onnx").read_bytes(), 9)) == deflate_bytes(result.onnx.path)
    assert (result.weights, result.nonzero_weights) == (18 + 64 + 24, 6 + 8 + 12)
    assert result.sparsity == pytest.approx(weight_sparsity(model)) == pytest.approx(1 - 26 / 106)
    assert result.csr_bytes == (6 * 8 + 3 * 4) + (8 * 8 + 9 * 4) + (12 * 8 + 4 * 4)
    assert result.dense_weight_bytes == 106 * 4
    assert result.other_bytes == (2 + 8 + 3) * 4  # the biases
    assert result.sparse_model_bytes == result.csr_bytes + result.other_bytes
    assert (result.parameters, result.nonzero_parameters) == (106 + 13, 26 + 13)
    # The file holds the zeros itself: every float entry of its initializers is a weight or a bias.
    assert (result.onnx_values, result.onnx_zeros) == (119, 80)
    summary = result.summary()
    assert summary["csr_bytes"] == result.csr_bytes and [layer["name"] for layer in summary["layers"]] == ["conv", "hidden", "head"]


def test_zeros_do_not_shrink_the_file_but_deflate_sees_them(tmp_path) -> None:
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)).eval()
    sparse = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)).eval()
    sparse.load_state_dict(dense.state_dict())
    with torch.no_grad():
        sparse[0].weight.mul_(torch.rand(64, 64) < 0.1)
    x = torch.randn(2, 64)
    dense_result = sparse_export(dense, x, tmp_path / "dense.onnx", FAST)
    sparse_result = sparse_export(sparse, x, tmp_path / "sparse.onnx", FAST)
    assert abs(sparse_result.onnx_bytes - dense_result.onnx_bytes) <= 64  # same tensors, same shapes
    assert sparse_result.deflate_bytes < 0.5 * dense_result.deflate_bytes
    first = sparse_result.layers[0]  # about 10% kept: 8 bytes per nonzero against 4 per entry dense
    assert first.csr_bytes < 0.3 * first.dense_bytes
    assert dense_result.csr_bytes > dense_result.dense_weight_bytes  # CSR of a dense matrix costs more than dense


def test_sparse_export_refuses_a_model_without_layers(tmp_path) -> None:
    with pytest.raises(ValueError, match="no nn.Linear or nn.Conv2d"):
        sparse_export(nn.Sequential(nn.ReLU()), torch.randn(2, 3), tmp_path / "m.onnx")
    with pytest.raises(TypeError, match="takes an nn.Module"):
        sparse_export("model.onnx", torch.randn(2, 3), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()

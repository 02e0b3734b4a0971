"""Masked == sliced == ONNX for every layer pattern, under random masks and statistics.

The model whose accuracy a run reports is the masked noisy model in evaluation mode; what ships is
its folded, sliced ONNX export. These compare the two on small random models of each pattern.
"""
from __future__ import annotations

import pytest
import torch

from bmrs.models import insert_noise
from bmrs.nn.groups import prune_at_random_
from bmrs.nn.noise import noise_modules
from bmrs.models.structures import NoisePoint, analyse_structures
from export.onnx_export import OnnxConfig, export_onnx
from export.slicing import check_sliceable, slice_model
from layer_patterns import PATTERNS, build_pattern, noisy_pattern

EXACT = sorted(name for name in PATTERNS if name != "conv_bn_sigmoid")


def masked_model(name: str, seed: int):
    model, x = noisy_pattern(name, seed)
    prune_at_random_(model, 0.5, seed=seed + 100)  # a coupled group loses the same channels in every member
    return model.eval(), x


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", EXACT)
def test_sliced_model_computes_the_masked_model(name, seed):
    model, x = masked_model(name, seed)
    result = slice_model(model, x)
    assert result.pruned_params < result.dense_params
    with torch.no_grad():
        assert torch.allclose(result.model(x), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["conv_bn_relu_pool", "resnet_blocks", "transformer_block"])
def test_onnx_export_computes_the_masked_model(name, tmp_path):
    import onnxruntime as ort

    model, x = masked_model(name, seed=0)
    sliced = slice_model(model, x).model.eval()
    export_onnx(sliced, x, tmp_path / "model.onnx", OnnxConfig())
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(output), model(x), atol=1e-4, rtol=1e-4)


def test_noise_before_a_batchnorm_is_refused_before_training():
    # What the default placement did before: masked 0 -> BatchNorm's constant -> sliced away.
    model, shape = build_pattern("conv_bn_relu", seed=0)
    insert_noise(model, [NoisePoint("0", "0", 8), NoisePoint("4", "3", 12)])
    with pytest.raises(ValueError, match=r"removing a pruned structure of \['0'\] changes the model's output"):
        check_sliceable(model, torch.randn(4, *shape))


def test_a_transformer_linear_noise_point_trains_and_slices():
    from bmrs.data import DataBundle, Split
    from bmrs.train import TrainConfig, train_

    model, shape = build_pattern("transformer_block", seed=0)
    generator = torch.Generator().manual_seed(0)

    def split(n):
        labels = torch.arange(n) % 3
        return Split(torch.randn(n, *shape, generator=generator) + labels.view(-1, 1, 1, 1).float(), labels)

    data = DataBundle("tokens", split(96), split(32), split(32), 3)
    insert_noise(model, analyse_structures(model, data.test.images[:2]).default_points())
    config = TrainConfig(epochs=2, finetune_epochs=0, batch_size=16, lr=1e-2, criterion="bmrs_n", progress=False)
    result = train_(model, data, config)
    assert all(record.loss == record.loss for record in result.history)  # finite, no NaN
    (noise,) = noise_modules(model).values()
    assert noise.dim == -1 and noise.mu.grad is not None
    model.eval()
    sliced = slice_model(model, data.test.images)
    with torch.no_grad():
        assert torch.allclose(sliced.model(data.test.images), model(data.test.images), atol=1e-5)

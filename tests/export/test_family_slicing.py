"""Every registered family, with its noise where ``build_network`` puts it and random masks over its
groups (coupled ones included): the sliced model computes the masked one, and its ONNX export
passes ``onnx.checker`` (full check) and matches PyTorch at several batch sizes."""
from __future__ import annotations

import pytest
import torch

from bmrs.models import MODELS, ModelConfig, NoiseInit, build_network
from bmrs.nn.groups import noise_groups, prune_at_random_
from export.onnx_export import OnnxConfig, export_onnx
from export.slicing import check_sliceable, slice_model

# Small inputs keep the suite fast; LeNet5 takes 28 or 32 pixels only.
SHAPES = {"lenet5": (1, 28, 28), "mlp": (1, 6, 6)}
DEFAULT_SHAPE = (3, 16, 16)
# ViT-B/16 is vit_tiny's architecture at 86M parameters: vit_tiny covers the family here, and
# benchmarks/large_models.py slices and exports ViT-B/16 itself at 224x224.
FAMILIES = sorted(set(MODELS) - {"vit_b_16"})


def masked_family(name: str, seed: int = 0):
    shape = SHAPES.get(name, DEFAULT_SHAPE)
    model = build_network(ModelConfig(name), shape, 10, noise=NoiseInit(), seed=seed)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(4, *shape, generator=generator)
    model.train()
    with torch.no_grad():
        model(torch.randn(16, *shape, generator=generator))  # BatchNorm statistics away from their fresh values
    model.eval()
    check_sliceable(model, x)
    prune_at_random_(model, 0.4, seed=seed)
    return model, x


@pytest.mark.parametrize("name", FAMILIES)
def test_the_sliced_family_computes_the_masked_one(name):
    model, x = masked_family(name)
    coupled = [group for group in noise_groups(model) if group.coupled]
    if name.startswith(("resnet", "mobilenet")):
        assert coupled, f"{name} has residual streams or depthwise convolutions: its noise must form coupled groups"
    result = slice_model(model, x)
    assert result.pruned_params < result.dense_params
    with torch.no_grad():
        reference = model(x)
        gap = float((result.model.eval()(x) - reference).abs().max())
    assert gap <= 1e-5 * (1.0 + float(reference.abs().max())), gap
    for group in coupled:  # one width for every member: a channel went from all of them or none
        widths = {result.widths[noise.source.removesuffix(".inner")] for noise in group.members.values()}
        assert widths == {int(group.mask.sum())}


@pytest.mark.parametrize("name", FAMILIES)
def test_the_sliced_family_exports_to_a_checked_onnx_file(name, tmp_path):
    model, x = masked_family(name)
    sliced = slice_model(model, x).model.eval()
    # export_onnx runs onnx.checker with full_check and compares onnxruntime with PyTorch at batch
    # sizes 1, 7 and 64 (the last two never traced): it raises unless all of that holds.
    export_onnx(sliced, x, tmp_path / "model.onnx", OnnxConfig(check_batch_sizes=(1, 7, 9)))
    assert (tmp_path / "model.onnx").stat().st_size > 0

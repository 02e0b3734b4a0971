"""The Vision Transformer families: shapes, patch sizes, and where their noise goes."""
from __future__ import annotations

import pytest
import torch

from bmrs.models import ModelConfig, NoiseInit, build_network
from bmrs.models.structures import analyse_structures
from bmrs.models.vit import patch_size_for
from bmrs.nn.noise import noise_modules


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_vit_tiny_fits_small_images_and_classifies(shape):
    model = build_network(ModelConfig("vit_tiny"), shape, 10).eval()
    assert model.conv_proj.in_channels == shape[0]
    with torch.no_grad():
        assert model(torch.randn(2, *shape)).shape == (2, 10)


def test_patch_sizes_follow_the_image():
    assert patch_size_for("vit", 224, 224, 16) == 16
    assert patch_size_for("vit", 28, 28, 16) == 7
    assert patch_size_for("vit", 32, 32, 16) == 8
    with pytest.raises(ValueError, match="resize the images"):
        patch_size_for("vit", 9, 9, 16)


def test_noise_goes_on_every_blocks_heads_and_mlp_hidden_layer_and_the_layernormed_stream_is_left_alone():
    model = build_network(ModelConfig("vit_tiny"), (1, 28, 28), 10, noise=NoiseInit())
    sources = {noise.source: noise.num_structures for noise in noise_modules(model).values()}
    blocks = [f"encoder.layers.encoder_layer_{i}" for i in range(4)]
    assert sources == {**{f"{b}.mlp.0.inner": 128 for b in blocks}, **{f"{b}.self_attention": 4 for b in blocks}}
    plain = build_network(ModelConfig("vit_tiny"), (1, 28, 28), 10)
    verdicts = analyse_structures(plain, torch.randn(2, 1, 28, 28)).verdicts
    assert "LayerNorm" in verdicts["conv_proj"].reason and "coupled with" in verdicts["conv_proj"].reason
    assert "whose heads carry the noise" in verdicts[f"{blocks[0]}.self_attention.q"].reason


def test_torchvision_vit_weights_load_and_compute_the_same_function(tmp_path):
    from torchvision.models.vision_transformer import VisionTransformer

    reference = VisionTransformer(image_size=28, patch_size=7, num_layers=4, num_heads=4, hidden_dim=64, mlp_dim=128, num_classes=10)
    reference.conv_proj = torch.nn.Conv2d(1, 64, 7, 7)
    torch.nn.init.normal_(reference.heads.head.weight)  # torchvision starts it at zero
    torch.save(reference.state_dict(), tmp_path / "vit.pt")
    ours = build_network(ModelConfig("vit_tiny", weights=str(tmp_path / "vit.pt")), (1, 28, 28), 10).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(ours(x), reference.eval()(x), atol=1e-5)


def test_non_square_images_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="square"):
        build_network(ModelConfig("vit_tiny"), (1, 28, 32), 10)

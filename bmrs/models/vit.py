"""Vision Transformers: torchvision's ``VisionTransformer`` as ``vit_b_16`` (the paper's ViT-B) and
``vit_tiny`` (a configuration that trains on a CPU), fitted to the data's shape.

Where noise goes (found by ``bmrs.models.structures`` from the traced model, no rule registered):
each block's attention heads (``bmrs.nn.attention.HeadAttention``: a removed head is its rows of
the query, key and value projections and its columns of the output projection) and MLP hidden units
(the first Linear of ``mlp``: GELU(0) = 0, so a removed unit is exactly a masked one). The residual
stream (the patch embedding and every block's MLP output and attention projection) is one coupled
group, but the LayerNorm before every block mixes all of its features, so removing a stream
feature is not the same function as masking it: the stream carries no noise.
"""
from __future__ import annotations

from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from bmrs.models.cnn_families import image_shape
from bmrs.models.registry import register_model
from bmrs.nn.attention import use_head_attention_

# Patch sizes tried, largest first, for images whose side the preferred patch does not divide.
SMALL_PATCHES = (8, 7, 4, 2)


def patch_size_for(family: str, height: int, width: int, preferred: int) -> int:
    """``preferred`` when it divides both sides and leaves at least a 4x4 grid of patches, else
    the largest of ``SMALL_PATCHES`` that does (28x28 Fashion-MNIST: 7, a 4x4 grid; CIFAR's 32: 8)."""
    for patch in (preferred, *SMALL_PATCHES):
        if height % patch == 0 and width % patch == 0 and height // patch >= 4 and width // patch >= 4:
            return patch
    raise ValueError(
        f"{family} needs square images whose side a patch size of {preferred} or one of {SMALL_PATCHES} divides "
        f"into at least 4 patches, got {height}x{width}; resize the images (e.g. to 32x32 or 224x224)"
    )


def vision_transformer(
    family: str, input_shape: tuple[int, ...], num_classes: int, *, patch: int, layers: int, heads: int, hidden: int, mlp: int
) -> VisionTransformer:
    """torchvision's ``VisionTransformer`` for ``input_shape``, untrained, its patch embedding taking
    the data's channel count, each ``nn.MultiheadAttention`` replaced by the same function as a
    ``HeadAttention`` (whose heads can carry noise and be removed). Module paths stay torchvision's
    (``conv_proj``, ``encoder.layers.encoder_layer_0.mlp.0``, ``heads.head``) and the attentions
    read torchvision's packed keys, so torchvision state dicts of the same layout load."""
    channels, height, width = image_shape(family, input_shape, min_size=8)
    if height != width:
        raise ValueError(f"{family} takes square images, got {height}x{width}; resize them to a square")
    patch_size = patch_size_for(family, height, width, patch)
    model = VisionTransformer(
        image_size=height, patch_size=patch_size, num_layers=layers, num_heads=heads, hidden_dim=hidden, mlp_dim=mlp,
        num_classes=num_classes,
    )  # fmt: skip
    if channels != model.conv_proj.in_channels:
        model.conv_proj = nn.Conv2d(channels, hidden, kernel_size=patch_size, stride=patch_size)
    return use_head_attention_(model)


@register_model("vit_b_16")
def vit_b_16(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """ViT-B/16 (12 blocks, 12 heads, 768 wide, MLP 3072): patches of 16 where they fit, else of 8,
    7, 4 or 2 (``patch_size_for``)."""
    return vision_transformer("vit_b_16", input_shape, num_classes, patch=16, layers=12, heads=12, hidden=768, mlp=3072)


@register_model("vit_tiny")
def vit_tiny(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A ViT small enough to train on a CPU: 4 blocks, 4 heads, 64 wide, MLP 128 (about 0.15M
    parameters), patches of 16 where they fit, else of 8, 7, 4 or 2 (``patch_size_for``)."""
    return vision_transformer("vit_tiny", input_shape, num_classes, patch=16, layers=4, heads=4, hidden=64, mlp=128)

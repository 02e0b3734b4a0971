"""Real convolutional architectures: the CIFAR ResNet (``resnet20``, any depth 6n+2) and
torchvision's ``resnet18``/``resnet34``/``resnet50``/``mobilenet_v2``, adapted to the data's shape.

None registers a noise rule: their residual sums and depthwise convolutions couple channels, and
``bmrs.models.structures`` works out from the traced model which layers can carry noise.
"""
from __future__ import annotations

from collections.abc import Callable

import torchvision
from torch import Tensor, nn

from bmrs.models.registry import register_model

RESNET20_DEPTH = 20
CIFAR_RESNET_WIDTHS = (16, 32, 64)
# Below this height or width an image is "small" (MNIST 28, CIFAR 32, Tiny ImageNet 64 is not):
# torchvision's ImageNet stem would shrink it too far before the first block.
SMALL_IMAGE_SIZE = 64


def image_shape(family: str, input_shape: tuple[int, ...], min_size: int = 1) -> tuple[int, int, int]:
    """``input_shape`` checked to be one image's ``(channels, height, width)``, each side >= ``min_size``."""
    shape = tuple(input_shape)
    if len(shape) != 3 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(
            f"{family} takes images shaped (channels, height, width), got input_shape {shape}; "
            "flat or sequence data needs the mlp or a model of your own"
        )
    channels, height, width = shape
    if height < min_size or width < min_size:
        raise ValueError(
            f"{family} needs images of at least {min_size}x{min_size} pixels, got {height}x{width}; "
            "upsample the data (e.g. transforms.Resize) or use lenet5/mlp"
        )
    return channels, height, width


def resnet_blocks_per_stage(depth: int) -> int:
    """The ``n`` of a CIFAR ResNet of ``depth`` = 6n + 2 layers (3 stages of n blocks of 2 convs,
    plus the stem conv and the classifier)."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(
            f"resnet20 depth must be 6n+2 with n >= 1 (e.g. 8, 20, 32, 44, 56, 110), got {depth!r}"
        )
    return (depth - 2) // 6


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm, added to the block's input (He et al. 2016, figure 2).

    On a change of shape the shortcut is a 1x1 conv + BatchNorm (the paper's option B) rather than
    option A's zero-padded identity, so every channel of the residual sum has a conv producing it
    and pruning a channel can remove it from both branches.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        residual = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(residual + self.shortcut(x))


class CifarResNet(nn.Module):
    """The CIFAR ResNet of He et al. 2016 (section 4.2): a 3x3 stem conv of 16 filters, three stages
    of ``n`` BasicBlocks with 16, 32 and 64 channels (stride 2 entering stages 2 and 3), global
    average pooling and a Linear classifier; ``depth`` = 6n + 2 (20: 0.27M parameters)."""

    def __init__(self, in_channels: int, num_classes: int, depth: int = RESNET20_DEPTH) -> None:
        super().__init__()
        blocks = resnet_blocks_per_stage(depth)
        first = CIFAR_RESNET_WIDTHS[0]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, first, 3, padding=1, bias=False), nn.BatchNorm2d(first), nn.ReLU(inplace=True)
        )
        stages = []
        channels = first
        for index, width in enumerate(CIFAR_RESNET_WIDTHS):
            stride = 1 if index == 0 else 2
            stage = [BasicBlock(channels, width, stride)] + [BasicBlock(width, width, 1) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            channels = width
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.flatten(self.pool(x)))


@register_model("resnet20")
def resnet20(input_shape: tuple[int, ...], num_classes: int, *, depth: int = RESNET20_DEPTH) -> nn.Module:
    """A CIFAR ResNet (``CifarResNet``) of ``depth`` 6n+2 layers (default 20) for images of any
    channel count and at least 8x8 pixels (two stride-2 stages leave a 2x2 map)."""
    resnet_blocks_per_stage(depth)  # a bad depth names itself before the input shape is looked at
    channels, _, _ = image_shape("resnet20", input_shape, min_size=8)
    return CifarResNet(channels, num_classes, depth=depth)


def is_small_image(height: int, width: int) -> bool:
    return height < SMALL_IMAGE_SIZE or width < SMALL_IMAGE_SIZE


def _stem_conv(old: nn.Conv2d, in_channels: int, kernel_size: int, stride: int, padding: int) -> nn.Conv2d:
    """``old`` rebuilt for ``in_channels`` inputs with another kernel/stride, initialised the way
    torchvision initialises its convs (He normal, fan out)."""
    conv = nn.Conv2d(
        in_channels, old.out_channels, kernel_size, stride=stride, padding=padding, bias=old.bias is not None
    )
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def adapted_torchvision_resnet(
    family: str, builder: Callable[..., nn.Module], input_shape: tuple[int, ...], num_classes: int
) -> nn.Module:
    """torchvision's ResNet with its stem fitted to the data.

    The first conv takes the data's channel count (1 for (Fashion-)MNIST). Images smaller than
    64 pixels on a side get the usual CIFAR stem, a 3x3 stride-1 conv and no max pool: the ImageNet
    stem (7x7 stride-2 conv, then a stride-2 max pool) would turn 28x28 into 7x7 before the first
    block, and layer4 would see 1x1 maps. Larger images keep torchvision's stem. Module paths stay
    torchvision's (``conv1``, ``layer1.0.conv1``, ``fc``), so state dicts of the same layout load.
    """
    channels, height, width = image_shape(family, input_shape)
    model = builder(weights=None, num_classes=num_classes)
    if is_small_image(height, width):
        model.conv1 = _stem_conv(model.conv1, channels, kernel_size=3, stride=1, padding=1)
        model.maxpool = nn.Identity()
    elif channels != model.conv1.in_channels:
        model.conv1 = _stem_conv(model.conv1, channels, kernel_size=7, stride=2, padding=3)
    return model


@register_model("resnet18")
def resnet18(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """torchvision's ResNet-18, untrained, its stem fitted to the data (``adapted_torchvision_resnet``)."""
    return adapted_torchvision_resnet("resnet18", torchvision.models.resnet18, input_shape, num_classes)


@register_model("resnet34")
def resnet34(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """torchvision's ResNet-34, untrained, its stem fitted to the data (``adapted_torchvision_resnet``)."""
    return adapted_torchvision_resnet("resnet34", torchvision.models.resnet34, input_shape, num_classes)


@register_model("resnet50")
def resnet50(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """torchvision's ResNet-50, untrained, its stem fitted to the data (``adapted_torchvision_resnet``)."""
    return adapted_torchvision_resnet("resnet50", torchvision.models.resnet50, input_shape, num_classes)


@register_model("mobilenet_v2")
def mobilenet_v2(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """torchvision's MobileNetV2, untrained, its first conv fitted to the data.

    The first conv (``features.0.0``) takes the data's channel count; for images smaller than 64
    pixels on a side its stride becomes 1 (the CIFAR adaptation), since the network downsamples 32
    times in all and a 32x32 image would otherwise end as a 1x1 map. Module paths stay
    torchvision's (``features.0.0``, ``classifier.1``).
    """
    channels, height, width = image_shape("mobilenet_v2", input_shape)
    model = torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes)
    stem: nn.Conv2d = model.features[0][0]
    stride = 1 if is_small_image(height, width) else 2
    if channels != stem.in_channels or stride != stem.stride[0]:
        model.features[0][0] = _stem_conv(stem, channels, kernel_size=3, stride=stride, padding=1)
    return model

"""Small networks of the layer patterns users bring (Conv-BN-act[-pool], Linear-BN1d, LayerNorm,
depthwise stacks, residual blocks, a transformer block), shared by the structure and export tests.

Each builder takes a seed and returns ``(model, input_shape)``; the models are random, with
BatchNorm statistics and affine parameters drawn away from their fresh values (a fresh BatchNorm
maps zero to zero and would hide a misplaced noise).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(act: type[nn.Module] = nn.ReLU, pool: bool = False) -> tuple[nn.Module, tuple[int, ...]]:
    layers: list[nn.Module] = [nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), act()]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), act(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5)]
    return nn.Sequential(*layers), (3, 8, 8)


class _Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class TinyResNet(nn.Module):
    """torchvision-style basic blocks: the stem and every block's conv2 are summed by residuals."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.block1, self.block2 = _Block(8), _Block(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        h = F.relu(self.bn(self.stem(x)))
        return self.fc(self.block2(self.block1(h)).mean((2, 3)))


class LinearNorms(nn.Module):
    """Linear-BN1d-SiLU, then Linear-LayerNorm-GELU: the second cannot be sliced exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(12, 20), nn.BatchNorm1d(20), nn.SiLU(), nn.Linear(20, 10), nn.LayerNorm(10), nn.GELU(), nn.Linear(10, 4)
        )  # fmt: skip

    def forward(self, x):
        return self.net(x)


def pointwise_stack() -> tuple[nn.Module, tuple[int, ...]]:
    """A residual-free MobileNet-like stack: pointwise, depthwise, pointwise."""
    model = nn.Sequential(
        nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 12, 1), nn.BatchNorm2d(12), nn.Hardswish(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5),
    )  # fmt: skip
    return model, (3, 8, 8)


class TinyTransformer(nn.Module):
    """Patch embedding, one pre-norm attention + MLP block over (batch, tokens, features), a head."""

    def __init__(self, width: int = 16, hidden: int = 32) -> None:
        super().__init__()
        self.embed = nn.Linear(4, width)
        self.norm1, self.attn = nn.LayerNorm(width), nn.MultiheadAttention(width, 2, batch_first=True)
        self.norm2, self.fc1, self.fc2 = nn.LayerNorm(width), nn.Linear(width, hidden), nn.Linear(hidden, width)
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        tokens = self.embed(x.flatten(2).transpose(1, 2))  # (batch, 9 tokens, 4 channels) -> features
        h = self.norm1(tokens)
        tokens = tokens + self.attn(h, h, h, need_weights=False)[0]
        tokens = tokens + self.fc2(F.gelu(self.fc1(self.norm2(tokens))))
        return self.head(tokens.mean(1))


PATTERNS = {
    "conv_bn_relu": lambda: conv_bn(),
    "conv_bn_relu_pool": lambda: conv_bn(pool=True),
    "conv_bn_gelu": lambda: conv_bn(nn.GELU),
    "conv_bn_silu_pool": lambda: conv_bn(nn.SiLU, pool=True),
    "conv_bn_sigmoid": lambda: conv_bn(nn.Sigmoid),
    "linear_bn1d_layernorm": lambda: (LinearNorms(), (3, 2, 2)),
    "pointwise_stack": pointwise_stack,
    "resnet_blocks": lambda: (TinyResNet(), (3, 8, 8)),
    "transformer_block": lambda: (TinyTransformer(), (4, 3, 3)),
}


def build_pattern(name: str, seed: int) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(seed)
    model, shape = PATTERNS[name]()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(n, generator=generator) * 2)
                module.weight.copy_(1.0 + 0.5 * torch.randn(n, generator=generator))
                module.bias.copy_(torch.randn(n, generator=generator))
    return model, shape


def noisy_pattern(name: str, seed: int):
    """``(model, x)``: the pattern with noise where ``analyse_structures`` puts it (coupled layers as
    groups), checked by ``check_sliceable``, with random posteriors and nothing pruned yet."""
    from bmrs.models.structures import analyse_structures
    from bmrs.nn.insert import insert_noise
    from bmrs.nn.noise import noise_modules
    from export.slicing import check_sliceable

    model, shape = build_pattern(name, seed)
    x = torch.randn(6, *shape, generator=torch.Generator().manual_seed(seed))
    insert_noise(model, analyse_structures(model, x).default_points())
    check_sliceable(model, x)
    generator = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for noise in noise_modules(model).values():
            n = noise.num_structures
            noise.mu.copy_(torch.empty(n).uniform_(-1.5, 0.0, generator=generator))
            noise.log_sigma.copy_(torch.empty(n).uniform_(-3.0, -0.5, generator=generator))
    return model, x

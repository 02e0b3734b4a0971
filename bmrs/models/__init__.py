"""Models: a registry of families, the paper's families, user models, and where their noise goes.

Layers: ``registry`` (``register_model``, ``build_model``), ``families`` (the paper's MLP and
LeNet5), ``cnn_families`` (the CIFAR ResNet, torchvision's ResNets and MobileNetV2), ``vit`` (Vision
Transformers), ``user`` (``package.module:factory`` models), ``structures`` (which layers of any model can carry noise
exactly), ``config`` (``ModelConfig``), ``network`` (``build_network``: a model with its noise, as
training builds it, optionally from saved weights).
"""
from bmrs.models import families  # noqa: F401  (registers the paper's families)
from bmrs.models import cnn_families  # noqa: F401  (registers resnet20, resnet18/34/50, mobilenet_v2)
from bmrs.models import vit  # noqa: F401  (registers vit_tiny, vit_b_16)
from bmrs.models.cnn_families import CifarResNet, resnet_blocks_per_stage
from bmrs.models.families import LENET5_WIDTHS, MLP_PRESETS, LeNet5, MlpShape, every_hidden_layer, lenet5_points, lenet5_widths, mlp_settings
from bmrs.models.config import ModelConfig
from bmrs.models.network import build_network, load_weights, noise_points_for
from bmrs.models.registry import MODELS, NOISE_RULES, build_model, register_model
from bmrs.models.structures import StructureMap, analyse_structures
from bmrs.models.user import is_user_model, resolve_factory
from bmrs.nn.insert import NoiseInit, NoisePoint, Noised, insert_noise

__all__ = [
    "LENET5_WIDTHS", "MLP_PRESETS", "MODELS", "NOISE_RULES", "CifarResNet", "LeNet5", "MlpShape", "ModelConfig", "NoiseInit", "NoisePoint", "Noised",
    "StructureMap", "analyse_structures", "build_model", "build_network", "every_hidden_layer", "insert_noise",
    "is_user_model", "lenet5_points", "lenet5_widths", "load_weights", "mlp_settings", "noise_points_for", "register_model",
    "resnet_blocks_per_stage", "resolve_factory",
]  # fmt: skip

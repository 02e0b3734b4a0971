"""Noise layers in networks: the log-normal multiplicative noise (``noise``), one batched bank of
every layer's posteriors (``bank``), where noise goes (``insert``), which noises are removed
together (``groups``) and how ``E[theta]`` folds into the weights it scales (``fold``)."""
from bmrs.nn.groups import NoiseGroup, noise_groups
from bmrs.nn.insert import NoiseInit, NoisePoint, Noised, insert_noise
from bmrs.nn.noise import LogNormalNoise, noise_modules

__all__ = ["LogNormalNoise", "NoiseGroup", "NoiseInit", "NoisePoint", "Noised", "insert_noise", "noise_groups", "noise_modules"]

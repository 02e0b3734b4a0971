"""Unstructured sparsification by Bayesian model reduction on individual weights (Markovic et al.
2023): mean-field Gaussian layers fitted by SVI (``meanfield``), the closed-form ``dF`` of a spike
prior per weight (``bmrs.math.gaussian_reduction``), and the resumable fit-prune-fine-tune rounds
(``loop.sparsify_`` with its ``config.SparsifyConfig``, its ``records`` and resumable
``checkpoints``); ``adabelief``, the paper's optimiser."""
from bmrs.sparsify.adabelief import AdaBelief
from bmrs.sparsify.config import SparsifyConfig, SparsifyOptimizer
from bmrs.sparsify.checkpoints import CHECKPOINT_NAME
from bmrs.sparsify.loop import sparsify_
from bmrs.sparsify.records import SparsifyEpoch, SparsifyResult, SparsifyRound
from bmrs.sparsify.meanfield import (
    MeanFieldConv2d, MeanFieldLayer, MeanFieldLinear, bmr_prune_, convertible_layers, meanfield_layers, to_dense,
    to_meanfield, weight_sparsity,
)  # fmt: skip

__all__ = [
    "CHECKPOINT_NAME", "AdaBelief", "MeanFieldConv2d", "MeanFieldLayer", "MeanFieldLinear", "SparsifyConfig",
    "SparsifyEpoch", "SparsifyOptimizer", "SparsifyResult", "SparsifyRound", "bmr_prune_", "convertible_layers",
    "meanfield_layers", "sparsify_", "to_dense", "to_meanfield", "weight_sparsity",
]  # fmt: skip

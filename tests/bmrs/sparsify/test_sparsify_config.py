"""``SparsifyConfig`` refuses what cannot run, in one line naming the setting."""
from __future__ import annotations

import pytest

from bmrs.sparsify import SparsifyConfig, SparsifyOptimizer


def test_defaults_are_the_papers_and_record_as_plain_values() -> None:
    config = SparsifyConfig()
    assert (config.epochs, config.max_rounds, config.finetune_epochs, config.spike_ratio, config.batch_size) == (10, 4, 5, 1e-8, 128)
    assert config.to_dict()["optimizer"] == "adam"
    assert SparsifyConfig(optimizer="adabelief").optimizer is SparsifyOptimizer.ADABELIEF


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        ({"epochs": 0}, ValueError, "sparsify.epochs must be >= 1"),
        ({"max_rounds": 0}, ValueError, "sparsify.max_rounds must be >= 1"),
        ({"finetune_epochs": -1}, ValueError, "sparsify.finetune_epochs must be >= 0"),
        ({"batch_size": 2.0}, TypeError, "sparsify.batch_size must be an integer"),
        ({"epochs": True}, TypeError, "sparsify.epochs must be an integer"),
        ({"spike_ratio": 1.0}, ValueError, r"sparsify.spike_ratio must be in \[0, 1\)"),
        ({"spike_ratio": -1e-8}, ValueError, "sparsify.spike_ratio"),
        ({"prior_std": 0.0}, ValueError, "sparsify.prior_std must be > 0"),
        ({"output_prior_std": float("inf")}, TypeError, "sparsify.output_prior_std must be a finite number"),
        ({"init_std": -1e-3}, ValueError, "sparsify.init_std must be > 0"),
        ({"lr": 2.0}, ValueError, "sparsify.lr 2 is above 1"),
        ({"lr": float("nan")}, TypeError, "sparsify.lr must be a finite number"),
        ({"kl_scale": -1.0}, ValueError, "sparsify.kl_scale must be >= 0"),
        ({"optimizer": "sgd"}, ValueError, r"sparsify.optimizer must be one of \['adam', 'adabelief'\]"),
        ({"optimizer": 3}, TypeError, "sparsify.optimizer must be a SparsifyOptimizer"),
        ({"prune_output_layer": "yes"}, TypeError, "sparsify.prune_output_layer must be true or false"),
        ({"device": "gpu0"}, ValueError, "sparsify.device 'gpu0' is not a device name"),
        ({"device": 0}, TypeError, "sparsify.device must be a device name"),
    ],
)
def test_refuses_bad_settings(settings, error, message) -> None:
    with pytest.raises(error, match=message):
        SparsifyConfig(**settings)

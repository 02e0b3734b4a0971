"""``SparsifyConfig``: the settings of BMR on individual weights (Markovic et al. 2023), frozen.

Defaults follow the paper and the authors' code (``dimarkov/bmr4pml``) where they carry over to
fine-tuning a trained network, and say so where they do not:

* ``prior_std = 0.1``, ``output_prior_std = 1.0``: the flat model's prior ``N(0, g^2)`` has a fixed
  scale per layer, not a learned one: ``gamma0 = 0.1`` for every layer and ten times that for the
  output layer in bmr4pml's ``scripts/image_classification.py`` (``BayesRegression`` multiplies the
  last layer's scale by 10). Learning it (empirical Bayes) is what the paper's hierarchical
  horseshoe baselines do and what BMR avoids.
* ``prune_output_layer = False``: bmr4pml's ``prune_spike_and_slab`` loops over every layer but the
  last; the output layer is small and every class needs its logits.
* ``spike_ratio = 1e-8``: the spike's std relative to the layer's prior std. bmr4pml's ``dF`` uses a
  spike variance of ``1e-16`` against a prior variance of 1, that is ``e / g = 1e-8``. Relative,
  because the decision then does not change when a layer's scale does; and its exact value hardly
  matters: as ``e -> 0``, ``dF`` converges to the Savage-Dickey ratio ``log q(0) / p(0)``, which
  ``spike_ratio = 0`` computes exactly.
* ``max_rounds = 4``, ``finetune_epochs = 5``, ``batch_size = 128``: the paper's ``k_max``, its
  fine-tuning after each pruning and its minibatch.
* ``epochs = 10``: the SVI fit before the first dF step, much shorter than bmr4pml's (100,000
  iterations at batch 128 before its first pruning, about 210 epochs of Fashion-MNIST), and a
  setting per model: measured on 3 seeds each (``benchmarks/weight_sparsity``), 10 epochs removed
  94.6% of the MLP's weights and 89.8% of LeNet5's, 30 epochs 91.4% of LeNet5's and 89.5% of the
  MLP's, whose posterior stds had by then reached the prior's (round 1 removed 48% instead of
  93%). The LeNet5 flows of flows.yaml set 30.
* ``optimizer = ADAM``, ``lr = 1e-3``: the paper fits with AdaBelief at 1e-2 from a random start;
  here the posterior starts at a trained network's weights, where a step of 1e-2 per weight would
  undo the training, and AdaBelief's steps exceed ``lr`` wherever gradients agree. AdaBelief is
  available (``SparsifyOptimizer.ADABELIEF``, ``bmrs.sparsify.adabelief``).
* ``kl_scale = 1``: the minibatch loss is ``mean NLL + kl_scale * KL / N_train``, the negative ELBO
  per example, so ``kl_scale = 1`` targets the true posterior (the paper's SVI objective).
* ``init_std = 1e-3``: the posterior starts narrow around the trained weights, so the first epochs
  behave like the trained network; SVI widens ``s`` where the data allow.

Measured on Fashion-MNIST (48,000 training images, batch 128: 375 steps per epoch), the paper's
MLP (1 hidden layer of 150) trained dense for 5 epochs by ``bmrs.train.train_`` (test accuracy
86.90%, NLL 0.371, ECE 0.013), then ``sparsify_`` with these defaults but a 10-epoch fit (10 + 4 x 5
epochs, 187 s on one thread):

* Adam moves every log-std by about ``lr`` per step, and here it does so for every weight alike:
  the posterior std grew 1.45-fold per epoch (= e^(375 lr)), its 10th and 90th percentiles equal
  to three digits, from 1e-3 to 0.040 after the 10 fit epochs, still rising (0.06 at the end). The
  first dF step therefore sees a common, unconverged ``s``; with ``e -> 0`` it removes the weights
  with ``|m| < s sqrt(2 ln(g / s))``, 0.054 at ``s = 0.04``, after SVI has shrunk the means of the
  weights the data do not need.
* Result: 93.4% of the weights removed in round 1, 95.0% after round 4 (rounds of 111,280, 1,281,
  312 and 265 weights); test accuracy 87.18%, NLL 0.359, ECE 0.005: better than the dense start on
  all three. A dF step took 2-8 ms, an SVI epoch 5-8 s.
* Letting the log-stds converge does not help: a learning rate of 1e-2 for the log-stds alone (the
  relative step bmr4pml's posterior scales get: they live in units of the prior scale, at lr 1e-2)
  brings the std to the prior's 0.1 within 2 epochs, where the posterior of most weights is the
  prior and ``dF`` is 0: the data cannot tell keeping from removing them. It removed 40.6% in round
  1 and 82.7% after round 4, test 86.37%, NLL 0.374, ECE 0.007. ``init_std = 1e-2`` (bmr4pml's
  start, a tenth of the prior std) removed 66.3% then 89.9%, test 86.81%, NLL 0.363, ECE 0.012.
  Hence the defaults are kept.
* What the defaults remove depends on the number of optimiser steps before each dF step (``s``
  about ``init_std * exp(lr * steps)``), not on epochs: on data with fewer steps per epoch the first
  dF step sees narrower posteriors and removes fewer weights; give ``epochs`` more there.
* bmr4pml itself prunes where ``dF > zeta``, ``zeta`` the expected log prior odds of a weight being
  kept under a Beta(1, 1) hyperprior on the kept fraction, updated four times from the dF values
  (``prune_spike_and_slab``; its comment names ``dF > 0`` as the alternative used here): once most
  weights look prunable, ``zeta < 0`` also removes weights whose posterior equals their prior.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, fields
from typing import Any


from bmrs.devices import check_device_name
from bmrs.train.config import MAX_LR


class SparsifyOptimizer(enum.Enum):
    ADAM = "adam"
    ADABELIEF = "adabelief"


@dataclass(frozen=True)
class SparsifyConfig:
    epochs: int = 10  # the initial SVI fit, before the first pruning
    finetune_epochs: int = 5  # after each round's pruning
    max_rounds: int = 4  # k_max: rounds of {dF, prune, fine-tune}; fewer when a round prunes nothing
    spike_ratio: float = 1e-8  # the spike's std e as a fraction of the layer's prior std g
    prior_std: float = 0.1  # g of every layer but the output layer
    output_prior_std: float = 1.0  # g of the output layer (the last Linear/Conv2d in module order)
    prune_output_layer: bool = False
    init_std: float = 1e-3  # the posterior std every weight starts with
    lr: float = 1e-3
    batch_size: int = 128
    optimizer: SparsifyOptimizer = SparsifyOptimizer.ADAM
    kl_scale: float = 1.0
    seed: int = 0
    device: str = "cpu"
    eval_batch_size: int = 2048
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "max_rounds", "batch_size", "eval_batch_size", "finetune_epochs", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"sparsify.{name} must be an integer, got {value!r}")
        for name in ("epochs", "max_rounds", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"sparsify.{name} must be >= 1, got {getattr(self, name)}")
        if self.finetune_epochs < 0:
            raise ValueError(f"sparsify.finetune_epochs must be >= 0, got {self.finetune_epochs}")
        for name in ("spike_ratio", "prior_std", "output_prior_std", "init_std", "lr", "kl_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise TypeError(f"sparsify.{name} must be a finite number, got {value!r}")
        for name in ("prior_std", "output_prior_std", "init_std", "lr"):
            if getattr(self, name) <= 0:
                raise ValueError(f"sparsify.{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.spike_ratio < 1:
            raise ValueError(
                f"sparsify.spike_ratio must be in [0, 1) (the spike is narrower than the prior), got {self.spike_ratio}; "
                "the paper's is 1e-8"
            )
        if self.lr > MAX_LR:
            raise ValueError(f"sparsify.lr {self.lr:g} is above {MAX_LR:g}: every weight would move by about lr per step; use 1e-3")
        if self.kl_scale < 0:
            raise ValueError(f"sparsify.kl_scale must be >= 0 (1 is the ELBO), got {self.kl_scale}")
        if isinstance(self.optimizer, str):
            try:
                object.__setattr__(self, "optimizer", SparsifyOptimizer(self.optimizer))
            except ValueError:
                choices = [choice.value for choice in SparsifyOptimizer]
                raise ValueError(f"sparsify.optimizer must be one of {choices}, got {self.optimizer!r}") from None
        if not isinstance(self.optimizer, SparsifyOptimizer):
            raise TypeError(f"sparsify.optimizer must be a SparsifyOptimizer (adam or adabelief), got {self.optimizer!r}")
        for name in ("prune_output_layer", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"sparsify.{name} must be true or false, got {getattr(self, name)!r}")
        check_device_name(self.device, "sparsify.device")

    def to_dict(self) -> dict[str, Any]:
        """Every setting, the optimizer as its value: what checkpoints and reports record."""
        settings = {f.name: getattr(self, f.name) for f in fields(self)}
        settings["optimizer"] = self.optimizer.value
        return settings

"""Training settings: the frozen ``TrainConfig`` and the modes it chooses between."""
from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass, field
from typing import Any


class KLWeighting(enum.Enum):
    """How the KL term enters the minibatch loss ``mean NLL + weight * KL``.

    ELBO: ``kl_scale / N_train * sum of KL``: the exact variational free energy (paper eq. 3)
    divided by N, so ``kl_scale = 1`` is the true posterior.
    LAYER_MEAN: ``kl_scale * mean over layers of (mean KL over the layer's structures)``, as the
    authors' released code does: a far stronger pull to the prior (a tempered posterior) that
    drives sigma up and makes structures prunable within tens of epochs.
    """

    ELBO = "elbo"
    LAYER_MEAN = "layer_mean"


class FinetuneNoise(enum.Enum):
    """What the fine-tuning epochs (after pruning stops) train.

    SAMPLED: the network with its noise, as in training (the paper's algorithm 1): a theta drawn per
    example and structure, the KL in the loss, the posteriors still learned.
    EXPECTED: the network as it is deployed: every ``E[theta]`` (what evaluation, the fold and the
    ONNX export use) folded into the weights of its layer at the first fine-tuning epoch, a fresh
    Adam, no KL, so the weights adapt to the model that is shipped instead of to noise that export
    removes, and Adam's steps are sized for the deployed weights rather than shrunk by ``E[theta]``.
    The posteriors become a fixed factor of one, so read anything from them before fine-tuning.
    """

    SAMPLED = "sampled"
    EXPECTED = "expected"


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 50
    finetune_epochs: int = 10
    prune_every: int = 1
    prune_start: int = 1  # the first epoch after which the criterion runs; then every prune_every epochs
    # Per layer (a path or path prefix, as in noise.start_on), a prune_start of its own; the layers
    # not named follow prune_start. Layers leave the prior at different times (fc2 after fc1).
    prune_start_by_layer: dict[str, int] = field(default_factory=dict)
    batch_size: int = 32
    lr: float = 1.4e-3
    kl_weighting: KLWeighting = KLWeighting.ELBO
    kl_scale: float = 1.0
    finetune_noise: FinetuneNoise = FinetuneNoise.SAMPLED
    criterion: str | None = "bmrs_n"
    criterion_settings: dict[str, Any] = field(default_factory=dict)
    min_structures_per_layer: int = 1
    seed: int = 0
    eval_batch_size: int = 2048
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        """Every setting, modes as their values: what checkpoints and cached results record. An empty
        ``prune_start_by_layer`` is left out, so that records made before it existed still match."""
        settings = {k: v.value if isinstance(v, enum.Enum) else v for k, v in asdict(self).items()}
        if not settings["prune_start_by_layer"]:
            del settings["prune_start_by_layer"]
        return settings

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "prune_every", "prune_start", "eval_batch_size", "min_structures_per_layer"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.prune_start > self.epochs:
            raise ValueError(
                f"train.prune_start ({self.prune_start}) is after the last training epoch ({self.epochs}), "
                "so nothing would be pruned; set it to at most train.epochs"
            )
        if not isinstance(self.prune_start_by_layer, dict):
            raise TypeError(f"train.prune_start_by_layer must map layer paths to epochs, got {self.prune_start_by_layer!r}")
        # YAML reads nn.Sequential's child names (`1: 10`) as integers; they name the same paths.
        starts = {str(path): start for path, start in self.prune_start_by_layer.items()}
        object.__setattr__(self, "prune_start_by_layer", starts)
        for path, start in starts.items():
            if not path or isinstance(start, bool) or not isinstance(start, int) or not 1 <= start <= self.epochs:
                raise ValueError(
                    f"train.prune_start_by_layer[{path!r}] must be an epoch from 1 to train.epochs ({self.epochs}), "
                    f"got {start!r}"
                )
        if self.finetune_epochs < 0:
            raise ValueError(f"train.finetune_epochs must be >= 0, got {self.finetune_epochs}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"train.lr must be a positive number, got {self.lr}")
        if not (self.kl_scale >= 0 and math.isfinite(self.kl_scale)):
            raise ValueError(f"train.kl_scale must be >= 0, got {self.kl_scale}")
        if not isinstance(self.kl_weighting, KLWeighting):
            raise TypeError(f"train.kl_weighting must be a KLWeighting, got {self.kl_weighting!r}")
        if not isinstance(self.finetune_noise, FinetuneNoise):
            raise TypeError(f"train.finetune_noise must be a FinetuneNoise, got {self.finetune_noise!r}")

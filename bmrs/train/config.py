"""Training settings: the frozen ``TrainConfig`` and the modes it chooses between."""
from __future__ import annotations

import copy
import enum
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from bmrs.devices import check_device_name
from bmrs.criteria import BMRSLogNormal, Criterion, complete_settings, criterion_from, criterion_name, settings_of


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


class ScheduleUnit(enum.Enum):
    """What the schedule settings (``epochs``, ``finetune_epochs``, ``prune_start``, ``prune_every``,
    ``prune_start_by_layer``) count.

    EPOCHS: passes over the training data. A recipe in epochs asks for as many optimiser steps as
    the data it was found on has batches, so on data 40 times smaller it takes 40 times fewer steps.
    STEPS: optimiser steps (minibatches), for recipes whose behaviour depends on how far the
    optimiser has gone (the climb of posteriors started at the prior). Training still runs whole
    epochs, each checkpointed: ``TrainConfig.in_epochs`` rounds every count to the nearest epoch
    once the data's steps per epoch is known.
    """

    EPOCHS = "epochs"
    STEPS = "steps"


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Optimiser steps in one epoch: the last, smaller batch is a step too."""
    return math.ceil(num_examples / batch_size)


# Record keys in the order records have always had them (the criterion between finetune_noise and
# min_structures_per_layer), so that a record reads the same as before criteria were typed.
_BEFORE_CRITERION = ("epochs", "finetune_epochs", "prune_every", "prune_start", "prune_start_by_layer", "batch_size",
                     "lr", "kl_weighting", "kl_scale", "finetune_noise")  # fmt: skip


def complete_record(record: dict[str, Any]) -> dict[str, Any]:
    """A ``TrainConfig.to_dict()`` record with its criterion's settings completed by their defaults:
    records written when only the settings a user gave were kept then equal today's, which keep all."""
    name = record.get("criterion")
    if name is None or not isinstance(record.get("criterion_settings"), dict):
        return dict(record)
    return {**record, "criterion_settings": complete_settings(name, record["criterion_settings"])}


# Adam's step is about lr in every coordinate whatever the gradient's scale: above 1 it throws
# weights of order 0.1 around by more than their size every step.
MAX_LR = 1.0


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 50
    finetune_epochs: int = 10
    prune_every: int = 1
    prune_start: int = 1  # the first epoch after which the criterion runs; then every prune_every epochs
    # (every schedule count here is in steps instead when schedule_unit is STEPS)
    # Per layer (a path or path prefix, as in noise.start_on), a prune_start of its own; the layers
    # not named follow prune_start. Layers leave the prior at different times (fc2 after fc1).
    prune_start_by_layer: dict[str, int] = field(default_factory=dict)
    batch_size: int = 32
    lr: float = 1.4e-3
    kl_weighting: KLWeighting = KLWeighting.ELBO
    kl_scale: float = 1.0
    finetune_noise: FinetuneNoise = FinetuneNoise.SAMPLED
    # How training prunes: a registered criterion (``BMRSLogUniform(p1=4)``; a name or a
    # ``{name: ..., settings}`` mapping is turned into one), or None to train without pruning.
    criterion: Criterion | None = field(default_factory=BMRSLogNormal)
    min_structures_per_layer: int = 1
    seed: int = 0
    eval_batch_size: int = 2048
    progress: bool = True
    # Last, and left out of to_dict when EPOCHS, so that every record made before it existed still matches.
    schedule_unit: ScheduleUnit = ScheduleUnit.EPOCHS
    # Where the weights train ('cpu', 'cuda', 'cuda:1'); the model comes back where it was. Like the
    # thread count it changes only the last bits, so it is left out of to_dict (checkpoints and cached
    # results of the same settings match across devices) and recorded in the checkpoint's environment.
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        """Every setting but ``device``, modes as their values and the criterion as its name and every one of its
        settings: what checkpoints and cached results record. An empty ``prune_start_by_layer`` and
        the default ``schedule_unit`` are left out, so that records made before they existed still
        match (``complete_record`` completes records written before criteria recorded every setting)."""
        settings = {f.name: getattr(self, f.name) for f in fields(self)}
        settings = {k: v.value if isinstance(v, enum.Enum) else copy.deepcopy(v) for k, v in settings.items()}
        del settings["device"]
        criterion = settings.pop("criterion")
        settings = {
            **{k: v for k, v in settings.items() if k in _BEFORE_CRITERION},
            "criterion": None if criterion is None else criterion_name(criterion),
            "criterion_settings": {} if criterion is None else settings_of(criterion),
            **{k: v for k, v in settings.items() if k not in _BEFORE_CRITERION},
        }
        if not settings["prune_start_by_layer"]:
            del settings["prune_start_by_layer"]
        if self.schedule_unit is ScheduleUnit.EPOCHS:
            del settings["schedule_unit"]
        return settings

    def for_examples(self, num_examples: int) -> TrainConfig:
        """``in_epochs`` for training data of ``num_examples`` examples in batches of ``batch_size``."""
        if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 1:
            raise ValueError(f"the training data must hold at least one example to train on, got {num_examples!r}")
        return self.in_epochs(steps_per_epoch(num_examples, self.batch_size))

    def in_epochs(self, steps_per_epoch: int) -> TrainConfig:
        """This schedule in whole epochs of ``steps_per_epoch`` optimiser steps: the config itself
        when it already counts epochs, else every count divided by ``steps_per_epoch`` and rounded
        to the nearest epoch (halves up), at least 1 (a fine-tuning of 0 steps stays 0). Rounding
        keeps order, so ``prune_start`` and the per-layer starts stay within ``epochs``."""
        if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be a positive integer, got {steps_per_epoch!r}")
        if self.schedule_unit is ScheduleUnit.EPOCHS:
            return self

        def whole(steps: int) -> int:
            return 0 if steps == 0 else max(1, (2 * steps + steps_per_epoch) // (2 * steps_per_epoch))

        return replace(
            self,
            epochs=whole(self.epochs),
            finetune_epochs=whole(self.finetune_epochs),
            prune_every=whole(self.prune_every),
            prune_start=whole(self.prune_start),
            prune_start_by_layer={path: whole(start) for path, start in self.prune_start_by_layer.items()},
            schedule_unit=ScheduleUnit.EPOCHS,
        )

    def __post_init__(self) -> None:
        if self.criterion is not None:
            try:
                object.__setattr__(self, "criterion", criterion_from(self.criterion))
            except (TypeError, ValueError) as error:
                raise type(error)(f"train.criterion: {error}") from None
        if not isinstance(self.schedule_unit, ScheduleUnit):
            raise TypeError(f"train.schedule_unit must be a ScheduleUnit (epochs or steps), got {self.schedule_unit!r}")
        unit = self.schedule_unit.value  # "epochs" or "steps"
        one, an_one = ("epoch", "an epoch") if self.schedule_unit is ScheduleUnit.EPOCHS else ("step", "a step")
        for name in ("epochs", "batch_size", "prune_every", "prune_start", "eval_batch_size", "min_structures_per_layer"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.prune_start > self.epochs:
            raise ValueError(
                f"train.prune_start ({self.prune_start}) is after the last training {one} ({self.epochs}), "
                "so nothing would be pruned; set it to at most train.epochs"
            )
        if not isinstance(self.prune_start_by_layer, dict):
            raise TypeError(f"train.prune_start_by_layer must map layer paths to {unit}, got {self.prune_start_by_layer!r}")
        # YAML reads nn.Sequential's child names (`1: 10`) as integers; they name the same paths.
        starts = {str(path): start for path, start in self.prune_start_by_layer.items()}
        object.__setattr__(self, "prune_start_by_layer", starts)
        for path, start in starts.items():
            if not path or isinstance(start, bool) or not isinstance(start, int) or not 1 <= start <= self.epochs:
                raise ValueError(
                    f"train.prune_start_by_layer[{path!r}] must be {an_one} from 1 to train.epochs ({self.epochs}), "
                    f"got {start!r}"
                )
        if self.finetune_epochs < 0:
            raise ValueError(f"train.finetune_epochs must be >= 0, got {self.finetune_epochs}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"train.lr must be a positive number, got {self.lr}")
        if self.lr > MAX_LR:
            raise ValueError(
                f"train.lr {self.lr:g} is above {MAX_LR:g}: Adam moves every weight by about lr per step, so training "
                "would diverge; use a value such as 1e-3"
            )
        if not (self.kl_scale >= 0 and math.isfinite(self.kl_scale)):
            raise ValueError(f"train.kl_scale must be >= 0, got {self.kl_scale}")
        if not isinstance(self.kl_weighting, KLWeighting):
            raise TypeError(f"train.kl_weighting must be a KLWeighting, got {self.kl_weighting!r}")
        if not isinstance(self.finetune_noise, FinetuneNoise):
            raise TypeError(f"train.finetune_noise must be a FinetuneNoise, got {self.finetune_noise!r}")
        check_device_name(self.device, "train.device")


@dataclass(frozen=True)
class Schedule:
    """What a ``TrainConfig`` runs on a training set: ``config`` counted in whole epochs of
    ``steps_per_epoch`` optimiser steps, and the unit the schedule was given in. What a log line and
    a report show, so that a recipe moved to other data can be read in the unit that transfers."""

    given_in: ScheduleUnit
    steps_per_epoch: int
    config: TrainConfig  # in epochs

    @classmethod
    def of(cls, given: TrainConfig, num_examples: int) -> Schedule:
        resolved = given.for_examples(num_examples)
        return cls(given.schedule_unit, steps_per_epoch(num_examples, given.batch_size), resolved)

    def as_dict(self) -> dict[str, Any]:
        config, per_epoch = self.config, self.steps_per_epoch
        return {
            "given_in": self.given_in.value,
            "steps_per_epoch": per_epoch,
            "epochs": config.epochs,
            "finetune_epochs": config.finetune_epochs,
            "prune_start": config.prune_start,
            "prune_every": config.prune_every,
            "prune_start_by_layer": dict(config.prune_start_by_layer),
            "steps": config.epochs * per_epoch,
            "finetune_steps": config.finetune_epochs * per_epoch,
        }

    def describe(self) -> str:
        config, per_epoch = self.config, self.steps_per_epoch
        by_layer = "".join(f", {path} after epoch {start}" for path, start in config.prune_start_by_layer.items())
        return (
            f"schedule (given in {self.given_in.value}, {per_epoch} steps per epoch): {config.epochs} training "
            f"epochs ({config.epochs * per_epoch} steps) + {config.finetune_epochs} fine-tuning epochs "
            f"({config.finetune_epochs * per_epoch} steps); pruning after epoch {config.prune_start}, then every "
            f"{config.prune_every}{by_layer}"
        )

"""Post-training pruning (paper section 5): rank once, remove progressively, fine-tune, measure.

A model trained with noise layers is scored by a criterion once; every alive structure of every
noise layer then joins one global ranking (lowest score first). ``post_training_prune`` removes the
ranking in ``steps`` equal chunks, fine-tunes after each, and records size and test metrics at every
point: an accuracy-vs-compression curve. For BMRS criteria the curve also marks where the ranking
crosses ``dF < 0``, the point BMRS itself would stop at, and every curve gets its knee.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bmrs.criteria import Criterion, criterion_from, criterion_name, group_views
from bmrs.data import DataBundle
from bmrs.train.metrics import classification_metrics
from bmrs.nn.attention import structure_weights
from bmrs.nn.groups import noise_groups
from bmrs.nn.noise import noise_modules
from bmrs.train.config import TrainConfig
from bmrs.train.loop import train_


@dataclass(frozen=True)
class PostTrainingConfig:
    # A registered criterion, or its name / {name: ..., settings} mapping (``criterion_from``).
    criterion: Criterion
    steps: int = 10  # compression points after the unpruned one
    finetune_epochs: int = 1  # after each removal; 0 measures the pruned model as is
    lr: float = 1.4e-3
    batch_size: int = 32
    seed: int = 0
    stop_at_bmrs_boundary: bool = True

    def __post_init__(self) -> None:
        # Built once here so that a bad setting fails before any fine-tuning is spent.
        object.__setattr__(self, "criterion", criterion_from(self.criterion))
        for name, low in (("steps", 1), ("finetune_epochs", 0), ("batch_size", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"post_training.{name} must be an integer >= {low}, got {value!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"post_training.lr must be a positive finite number, got {self.lr!r}")
        if not isinstance(self.stop_at_bmrs_boundary, bool):
            raise TypeError(f"post_training.stop_at_bmrs_boundary must be true or false, got {self.stop_at_bmrs_boundary!r}")


@dataclass(frozen=True)
class CurvePoint:
    removed: int  # structures removed by this protocol (ones pruned during training not counted)
    compression: float
    accuracy: float
    nll: float
    ece: float


@dataclass(frozen=True)
class PruningCurve:
    criterion: str
    points: list[CurvePoint]
    bmrs_boundary: int | None  # BMRS criteria: alive structures with dF >= 0 on the trained model
    bmrs_stop_index: int | None  # the point with as many removals as the boundary allows
    knee_index: int | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: a non-finite number (a diverged NLL, say) becomes None."""
        return {
            "criterion": self.criterion,
            "points": [{k: _finite_or_none(v) for k, v in asdict(point).items()} for point in self.points],
            "bmrs_boundary": self.bmrs_boundary,
            "bmrs_stop_index": self.bmrs_stop_index,
            "knee_index": self.knee_index,
        }


def _finite_or_none(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def knee_index(xs: Sequence[float], ys: Sequence[float]) -> int | None:
    """Kneedle-style knee: the point farthest from the chord joining the first and last points,
    both axes normalised to [0, 1] so that the units of either do not decide. None when there are
    fewer than three points, or every point lies on the chord (a straight curve has no knee)."""
    if len(xs) != len(ys):
        raise ValueError(f"knee_index needs as many x as y values, got {len(xs)} and {len(ys)}")
    if len(xs) < 3:
        return None
    x = torch.tensor([float(v) for v in xs], dtype=torch.float64)
    y = torch.tensor([float(v) for v in ys], dtype=torch.float64)
    if not bool(torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ValueError(f"knee_index needs finite values, got x={list(xs)} and y={list(ys)}")
    # A flat axis has no scale to normalise by; leaving it unscaled keeps it flat (all zeros).
    x = (x - x.min()) / ((x.max() - x.min()) if x.max() > x.min() else 1.0)
    y = (y - y.min()) / ((y.max() - y.min()) if y.max() > y.min() else 1.0)
    dx, dy = x[-1] - x[0], y[-1] - y[0]
    length = math.hypot(float(dx), float(dy))
    if length == 0.0:
        return None
    distance = (dx * (y - y[0]) - dy * (x - x[0])).abs() / length
    best = int(torch.argmax(distance))
    return best if float(distance[best]) > 1e-12 else None


def post_training_prune(
    model: nn.Module,
    data: DataBundle,
    config: PostTrainingConfig,
    *,
    compression: Callable[[nn.Module], float],
) -> PruningCurve:
    """The accuracy-vs-compression curve of ``model`` pruned by ``config.criterion``'s ranking.

    ``model`` is left untouched: one copy is pruned and fine-tuned step after step, so memory stays
    at one extra model whatever ``steps`` is. ``compression`` measures a noisy model: pass
    ``lambda m: export.slicing.parameter_compression(m, example_batch)`` for the fraction of
    parameters slicing removes (bmrs does not depend on export, so the caller supplies it).
    """
    if not isinstance(config, PostTrainingConfig):
        raise TypeError(f"config must be a PostTrainingConfig, got {type(config).__name__}")
    if not noise_modules(model):
        raise ValueError(
            "post-training pruning ranks noise-layer structures, and this model has no noise layers; "
            "insert them with bmrs.models.insert_noise and train before pruning"
        )
    work = copy.deepcopy(model)
    criterion = config.criterion
    ranking, boundary, stop = _rank(work, data, criterion, config)
    targets = {round(i * len(ranking) / config.steps) for i in range(config.steps + 1)}
    if stop is not None and config.stop_at_bmrs_boundary:
        targets.add(stop)
    groups = {group.name: group for group in noise_groups(work)}
    points: list[CurvePoint] = []
    removed = 0
    for step, target in enumerate(sorted(targets)):
        if target > removed:
            chunk = {name: torch.zeros_like(group.mask) for name, group in groups.items()}
            for name, index in ranking[removed:target]:
                chunk[name][index] = True
            for name, mask in chunk.items():
                groups[name].prune_(mask)
            removed = target
            if config.finetune_epochs:
                train_(work, data, TrainConfig(
                    epochs=config.finetune_epochs, finetune_epochs=0, criterion=None, lr=float(config.lr),
                    batch_size=config.batch_size, seed=config.seed + step, progress=False,
                ))  # fmt: skip
        metrics = classification_metrics(work, data.test)
        points.append(CurvePoint(removed, float(compression(work)), metrics.accuracy, metrics.nll, metrics.ece))
    stop_index = next((i for i, p in enumerate(points) if p.removed == stop), None) if stop is not None else None
    return PruningCurve(
        criterion=criterion_name(criterion),
        points=points,
        bmrs_boundary=boundary,
        bmrs_stop_index=stop_index,
        knee_index=knee_index([p.compression for p in points], [p.accuracy for p in points]),
    )


def _rank(
    model: nn.Module, data: DataBundle, criterion: Criterion, config: PostTrainingConfig
) -> tuple[list[tuple[str, int]], int | None, int | None]:
    """(global ranking, lowest score first, of every removable structure as (group name, index);
    BMRS boundary; removals the boundary allows). A coupled group's channel is one entry. Each
    group's best structure is left out of the ranking: a layer with no structure outputs a
    constant, which cuts the network's output off from its input."""
    grad_sq = gradient_statistics(model, data, batch_size=config.batch_size, seed=config.seed) if criterion.needs_gradients else {}
    names, indices, scores, prunes = [], [], [], []
    boundary = 0
    for group in group_views(model, grad_sq):
        name, mask = group.name, group.mask
        decision = criterion.decide(group)
        alive = mask.nonzero().flatten()
        if alive.numel() == 0:
            continue
        layer_scores = decision.scores.detach().double()[alive]
        if bool(torch.isnan(layer_scores).any()):
            raise ValueError(
                f"criterion {criterion_name(criterion)!r} scored a structure of {name!r} NaN, so it cannot be ranked; "
                "check the model's weights and noise for NaN"
            )
        boundary += int((decision.prune & mask).sum())
        best = int(torch.argsort(layer_scores, descending=True, stable=True)[0])
        keep = torch.ones_like(alive, dtype=torch.bool)
        keep[best] = False
        names += [name] * int(keep.sum())
        indices += alive[keep].tolist()
        scores.append(layer_scores[keep])
        prunes.append(decision.prune[alive[keep]])
    if not names:
        return [], (boundary if criterion.prunes_at_evidence_boundary else None), None
    order = torch.argsort(torch.cat(scores), stable=True).tolist()
    ranking = [(names[i], indices[i]) for i in order]
    if not criterion.prunes_at_evidence_boundary:
        return ranking, None, None
    # Scores are -dF, so every dF >= 0 structure ranks ahead of every dF < 0 one; protected ones
    # (a layer's last) cannot be removed, so the boundary point may stop short of ``boundary``.
    allowed = int(torch.cat(prunes).sum())
    return ranking, boundary, allowed


def gradient_statistics(model: nn.Module, data: DataBundle, *, batch_size: int, seed: int = 0) -> dict[str, Tensor]:
    """One pass over the training data summing each structure's squared loss gradient of its
    incoming weights per minibatch, as training does for the ``grad`` criterion; no step is taken."""
    noises = noise_modules(model)
    torch.manual_seed(seed)  # the noise draws, so that the statistics are reproducible
    was_training = model.training
    model.train()
    sums: dict[str, Tensor] = {}
    for images, labels in data.train.batches(batch_size):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        for name, noise in noises.items():
            squared = structure_weights(model.get_submodule(noise.source), grad=True).pow(2).sum(1)
            sums[name] = sums[name] + squared if name in sums else squared
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return sums

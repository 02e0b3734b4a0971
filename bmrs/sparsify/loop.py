"""``sparsify_``: Bayesian model reduction on individual weights (Markovic et al. 2023), resumable.

The model's Linear/Conv2d layers become mean-field Gaussian layers (``meanfield``) starting at its
weights; stochastic variational inference fits the posterior under the flat prior ``N(0, g^2)``
for ``epochs`` epochs (round 0). Then, for up to ``max_rounds`` rounds: BMR computes, in closed
form and for every kept weight, the change ``dF`` in the free energy of replacing its prior by the
spike ``N(0, e^2)``; every weight with ``dF >= 0`` is removed; SVI fine-tunes the rest for
``finetune_epochs`` epochs. A round that removes nothing ends the run (the posterior it would
fine-tune is the one that was just judged). The dF step reads the posterior's parameters once and
costs one elementwise pass over the weights, far less than a training epoch; every round records
both wall times, which is the paper's efficiency claim to check on real models.

The model is changed in place, as the project's other ``*_`` verbs change theirs: at the end its
Linear/Conv2d layers hold the posterior means with the removed weights exactly 0, the same modules,
keys and shapes as before, so it slices, saves and exports like any plain model; the fitted
mean-field model (posterior stds included) is returned beside it.

With ``checkpoint_dir`` every epoch and every dF step ends in an atomic checkpoint holding all
that the rest of the run depends on (posteriors, masks, optimiser state, both random streams, the
records), so ``resume=True`` continues to the bit-identical result of an uninterrupted run.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from bmrs.data import DataBundle
from bmrs.devices import available_device, synchronize
from bmrs.nn.noise import noise_modules
from bmrs.sparsify.adabelief import AdaBelief
from bmrs.sparsify.checkpoints import CHECKPOINT_NAME, resume_run, run_fingerprint, save_run
from bmrs.sparsify.config import SparsifyConfig, SparsifyOptimizer
from bmrs.sparsify.meanfield import MeanFieldLayer, bmr_prune_, meanfield_layers, to_dense, to_meanfield
from bmrs.sparsify.records import Position, SparsifyEpoch, SparsifyResult, SparsifyRound
from bmrs.train.loop import TrainingDivergedError
from bmrs.train.metrics import classification_metrics

# SVI fits the weights' uncertainty; dropout would add a second, unmodelled one (bmr4pml turns it off too).
DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def sparsify_(
    model: nn.Module, data: DataBundle, config: SparsifyConfig, *, checkpoint_dir: str | Path | None = None, resume: bool = False
) -> SparsifyResult:
    """Sparsify ``model`` in place by BMR on individual weights (see the module docstring).

    ``data``: the training split is fitted, the validation split measured after every round.
    ``checkpoint_dir``: where ``sparsify.pt`` is written after every epoch and every dF step.
    ``resume``: continue from ``checkpoint_dir``'s checkpoint when there is one (written by a call
    with the same model, data and settings; anything else is refused), else start afresh. A finished
    checkpoint is loaded and returned without training.
    """
    _check_arguments(model, data, config, checkpoint_dir, resume)
    device = available_device(config.device, "sparsify.device")
    path = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_NAME
    fingerprint = run_fingerprint(model, data, config) if path is not None else None
    meanfield = to_meanfield(model, prior_std=config.prior_std, output_prior_std=config.output_prior_std, init_std=config.init_std)
    meanfield.to(device)
    layers = meanfield_layers(meanfield)
    output_layer = next(reversed(layers))
    prunable = {name: layer for name, layer in layers.items() if config.prune_output_layer or name != output_layer}
    if not prunable:
        raise ValueError(
            f"the model's only Linear/Conv2d layer ({output_layer!r}) is its output layer, which "
            "sparsify.prune_output_layer=false spares, so nothing could be pruned; set it to true"
        )
    optimizer = _make_optimizer(meanfield, config)
    shuffle = torch.Generator().manual_seed(config.seed)
    if resume and path.is_file():
        position, epochs, rounds = resume_run(path, meanfield, optimizer, shuffle, fingerprint, device)
    else:
        torch.manual_seed(config.seed)  # a resume takes its random state from the checkpoint instead
        position, epochs, rounds = Position(), [], []

    def save() -> None:
        if path is not None:
            save_run(path, meanfield, position, epochs, rounds, fingerprint, optimizer, shuffle, device)

    while not position.finished:
        if position.round >= 1 and not position.pruned:
            removed, seconds = _timed_prune(prunable, config.spike_ratio, device)
            position.pruned, position.step = True, {"pruned": removed, "seconds": seconds}
            if removed == 0:
                rounds.append(_round_record(meanfield, layers, data, config, position, epochs))
                position.finished = position.stopped_early = True
                _report(config, rounds[-1])
            save()
            continue
        budget = config.epochs if position.round == 0 else config.finetune_epochs
        while position.epoch < budget:
            epochs.append(_run_epoch(meanfield, layers, data, config, optimizer, shuffle, device, position))
            position.epoch += 1
            save()
        rounds.append(_round_record(meanfield, layers, data, config, position, epochs))
        _report(config, rounds[-1])
        if position.round == config.max_rounds:
            position.finished = True
        else:
            position = Position(round=position.round + 1)
        save()
    model.load_state_dict(to_dense(meanfield).state_dict())
    return SparsifyResult(model, meanfield, rounds, epochs, position.stopped_early)


def _check_arguments(model: nn.Module, data: DataBundle, config: SparsifyConfig, checkpoint_dir: object, resume: bool) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"sparsify_ takes an nn.Module, got {type(model).__name__}")
    if not isinstance(data, DataBundle):
        raise TypeError(f"sparsify_ takes the data as a bmrs.data.DataBundle, got {type(data).__name__}")
    if not isinstance(config, SparsifyConfig):
        raise TypeError(f"sparsify_ takes a SparsifyConfig, got {type(config).__name__}")
    if noise_modules(model):
        raise ValueError(
            "the model still has BMRS noise layers; fold and slice it first (export.slicing.slice_model), then "
            "sparsify the plain model"
        )
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs the checkpoint_dir the interrupted run wrote to")


def _make_optimizer(model: nn.Module, config: SparsifyConfig) -> torch.optim.Optimizer:
    if config.optimizer is SparsifyOptimizer.ADABELIEF:
        return AdaBelief(model.parameters(), lr=config.lr)
    return torch.optim.Adam(model.parameters(), lr=config.lr)


def _svi_mode(model: nn.Module) -> None:
    model.train()
    for module in model.modules():
        if isinstance(module, DROPOUT):
            module.eval()


def _run_epoch(
    meanfield: nn.Module, layers: dict[str, MeanFieldLayer], data: DataBundle, config: SparsifyConfig,
    optimizer: torch.optim.Optimizer, shuffle: torch.Generator, device: torch.device, position: Position,
) -> SparsifyEpoch:  # fmt: skip
    """One SVI epoch: the minibatch loss is the negative ELBO per example, ``mean NLL + KL / N``."""
    started = time.perf_counter()
    _svi_mode(meanfield)
    kl_weight = config.kl_scale / len(data.train)
    masked = [layer for layer in layers.values() if layer.num_alive < layer.num_weights]
    sums = {"loss": 0.0, "nll": 0.0, "kl": 0.0, "correct": 0, "seen": 0}
    for step, (images, labels) in enumerate(data.train.batches(config.batch_size, generator=shuffle)):
        images, labels = images.to(device), labels.to(device)
        logits = meanfield(images)
        nll = F.cross_entropy(logits, labels)
        kl = kl_weight * torch.stack([layer.kl() for layer in layers.values()]).sum()
        loss = nll + kl
        if not torch.isfinite(loss):
            stage = "the initial fit" if position.round == 0 else f"round {position.round}'s fine-tuning"
            raise TrainingDivergedError(
                f"loss became {float(loss.detach())} in {stage}, epoch {position.epoch + 1}, step {step + 1} (NLL "
                f"{float(nll.detach())}, KL term {float(kl.detach())}); lower sparsify.lr (now {config.lr}) or "
                f"sparsify.init_std (now {config.init_std}); epochs finished before this one are in the last checkpoint"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for layer in masked:
            layer.zero_pruned_()
        batch = labels.numel()
        sums["loss"] += float(loss.detach()) * batch
        sums["nll"] += float(nll.detach()) * batch
        sums["kl"] += float(kl.detach()) * batch
        sums["correct"] += int((logits.argmax(1) == labels).sum())
        sums["seen"] += batch
    synchronize(device)
    seen = sums["seen"]
    record = SparsifyEpoch(
        round=position.round, epoch=position.epoch + 1, loss=sums["loss"] / seen, nll=sums["nll"] / seen,
        kl=sums["kl"] / seen, train_accuracy=sums["correct"] / seen, seconds=time.perf_counter() - started,
    )  # fmt: skip
    if config.progress:
        tqdm.write(
            f"sparsify round {record.round} epoch {record.epoch}: loss {record.loss:.4f} (NLL {record.nll:.4f}, KL {record.kl:.4f}), "
            f"train acc {record.train_accuracy:.4f}, {record.seconds:.2f} s"
        )
    return record


def _timed_prune(prunable: dict[str, MeanFieldLayer], spike_ratio: float, device: torch.device) -> tuple[int, float]:
    synchronize(device)
    started = time.perf_counter()
    removed = sum(bmr_prune_(prunable, spike_ratio).values())
    synchronize(device)
    return removed, time.perf_counter() - started


def _round_record(
    meanfield: nn.Module, layers: dict[str, MeanFieldLayer], data: DataBundle, config: SparsifyConfig,
    position: Position, epochs: list[SparsifyEpoch],
) -> SparsifyRound:  # fmt: skip
    metrics = classification_metrics(meanfield, data.val, config.eval_batch_size)  # restores the training mode
    if not math.isfinite(metrics.nll):
        # A finite training loss with an infinite validation NLL: means so large that some class gets
        # probability 0. Nothing trained further from here is worth keeping.
        raise TrainingDivergedError(
            f"the validation NLL became {metrics.nll} after round {position.round}: the posterior means blew up; lower "
            f"sparsify.lr (now {config.lr}); epochs finished before this one are in the last checkpoint"
        )
    alive = {name: layer.num_alive for name, layer in layers.items()}
    total = sum(layer.num_weights for layer in layers.values())
    seconds = [record.seconds for record in epochs if record.round == position.round]
    return SparsifyRound(
        round=position.round,
        pruned=position.step.get("pruned", 0),
        alive=sum(alive.values()),
        total=total,
        sparsity=1.0 - sum(alive.values()) / total,
        accuracy=metrics.accuracy,
        nll=metrics.nll,
        ece=metrics.ece,
        prune_seconds=position.step.get("seconds"),
        epoch_seconds=sum(seconds) / len(seconds) if seconds else None,
        alive_by_layer=alive,
    )


def _report(config: SparsifyConfig, record: SparsifyRound) -> None:
    if not config.progress:
        return
    timing = "" if record.prune_seconds is None else f", dF step {record.prune_seconds * 1e3:.1f} ms"
    if record.epoch_seconds is not None:
        timing += f", epoch {record.epoch_seconds:.2f} s"
    tqdm.write(
        f"sparsify round {record.round}: removed {record.pruned}, sparsity {record.sparsity:.1%}, val acc "
        f"{record.accuracy:.4f}, NLL {record.nll:.4f}, ECE {record.ece:.4f}{timing}"
    )



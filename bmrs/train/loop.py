"""Training with multiplicative noise and continuous pruning (paper algorithm 1).

``train_(model, data, config)`` trains weights and noise jointly for ``epochs`` epochs, asks the
criterion every ``prune_every`` epochs which structures to remove (for good), then fine-tunes for
``finetune_epochs`` epochs with pruning frozen (a schedule given in optimiser steps is first rounded
to whole epochs of the data). A model without noise layers trains as the paper's "None" baseline.

With ``checkpoint_path`` every epoch ends in a checkpoint holding everything the next epoch
depends on (weights, noise, masks, Adam's moments, both random streams, the gradient statistics of
the ``grad`` criterion), so ``train_(..., resume_from=path)`` continues to the bit-identical result
of an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from bmrs.train.checkpoint import (
    check_resumable_checkpoint, damaged_training_state, load_optimizer_and_check_random_state, open_for_resume,
    read_checkpoint, restore_random_state, save_checkpoint,
)
from bmrs.criteria import criterion_name
from bmrs.data import DataBundle, Split
from bmrs.devices import available_device, module_device
from bmrs.nn.fold import absorb_expected_noise_
from bmrs.train.metrics import classification_metrics
from bmrs.math.fused import compile_enabled
from bmrs.nn.attention import structure_weights
from bmrs.nn.noise import LogNormalNoise, noise_modules, project_log_sigma_
from bmrs.train.config import FinetuneNoise, KLWeighting, Schedule, ScheduleUnit, TrainConfig
from bmrs.train.pruning import prune_decisions, prune_starts, prunes_after


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    phase: str  # "train" or "finetune"
    loss: float
    nll: float
    kl: float
    train_accuracy: float
    val_accuracy: float
    val_nll: float
    compression: float
    alive: dict[str, int]
    seconds: float
    # Per noise layer, the structures the criterion would keep were it to prune after this epoch: how
    # a schedule's choice of pruning time shows up before it is made. None outside training with a criterion.
    criterion_keeps: dict[str, int] | None = None


@dataclass
class TrainResult:
    model: nn.Module
    history: list[EpochRecord]
    schedule: Schedule  # the epochs it trained, and the steps they are, however the config counted them

    def as_dict(self) -> list[dict[str, Any]]:
        return [asdict(record) for record in self.history]


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam without weight decay (paper appendix C). The fused kernel updates every tensor in one
    pass: the default CPU path loops over tensors in Python, and noise layers double their number."""
    return torch.optim.Adam(model.parameters(), lr=lr, fused=True)


def kl_penalty(noises: list[LogNormalNoise], weighting: KLWeighting, scale: float, num_train: int) -> Tensor:
    """The KL term of the minibatch loss under ``weighting`` (see ``KLWeighting``)."""
    bank = noises[0].bank
    if bank is not None and bank.layers == noises:
        reference = noises[0].mu
        if weighting is KLWeighting.ELBO:
            weights = torch.full((bank.num_structures,), scale / num_train, dtype=reference.dtype, device=reference.device)
        else:
            weights = scale * bank.layer_mean_weights(reference)
        return bank.weighted_kl(weights)
    if weighting is KLWeighting.ELBO:
        return scale / num_train * torch.stack([noise.kl().sum() for noise in noises]).sum()
    return scale * torch.stack([noise.kl().mean() for noise in noises]).mean()


def evaluate(model: nn.Module, split: Split, batch_size: int = 2048) -> tuple[float, float]:
    """(accuracy, mean NLL) in evaluation mode, i.e. with ``E[theta]`` in place of the noise."""
    metrics = classification_metrics(model, split, batch_size)
    return metrics.accuracy, metrics.nll


def structure_compression(model: nn.Module) -> float:
    """Fraction of noise-layer structures pruned: the default progress measure."""
    noises = noise_modules(model).values()
    total = sum(n.num_structures for n in noises)
    return 0.0 if total == 0 else 1.0 - sum(int(n.mask.sum()) for n in noises) / total


def training_fingerprint(model: nn.Module, data: DataBundle, config: TrainConfig) -> dict[str, Any]:
    """What a checkpoint's continuation depends on besides its own state: every training setting
    (bar ``progress``), the model's modules and tensor shapes, and the data. Resuming under a
    different fingerprint could not reproduce the uninterrupted run, so it is refused."""
    settings = {k: v for k, v in config.to_dict().items() if k != "progress"}
    modules = {name or "(root)": _describe(module) for name, module in model.named_modules()}
    tensors = {key: f"{tensor.dtype}{list(tensor.shape)}" for key, tensor in model.state_dict().items()}
    splits = {"train": data.train, "val": data.val}
    described = {
        "train": settings,
        "model": {"modules": modules, "tensors": tensors},
        "data": {"num_classes": data.num_classes, **{f"{name}_digest": _digest(split) for name, split in splits.items()}},
    }
    # Through JSON so that it compares equal to the copy read back from a checkpoint (tuples become lists).
    return json.loads(json.dumps(described, allow_nan=False))


def training_environment(device: torch.device | None = None) -> dict[str, Any]:
    """What decides the last bits of a result, though not the result itself: CPU reductions split
    work by thread count, the fused kernels round differently from their eager fallback, and a GPU
    sums in another order (``device``: recorded when given, so that a CPU run's record is unchanged)."""
    environment = {"torch": str(torch.__version__), "threads": torch.get_num_threads(), "compiled": compile_enabled()}
    if device is not None and device.type != "cpu":
        environment["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    return environment


def _describe(module: nn.Module) -> str:
    if isinstance(module, LogNormalNoise):
        # Not extra_repr: it counts the structures alive, which changes as training prunes.
        return f"LogNormalNoise({module.num_structures}, dim={module.dim}, log_a={module.log_a}, log_b={module.log_b}, source={module.source})"
    return f"{type(module).__name__}({module.extra_repr()})"


def _digest(split: Split) -> str:
    hasher = hashlib.blake2b(digest_size=16)
    for tensor in (split.images, split.labels):
        hasher.update(f"{tensor.dtype}{list(tensor.shape)}".encode())
        hasher.update(tensor.detach().cpu().contiguous().numpy().data)
    return f"{len(split)} examples, {hasher.hexdigest()}"


@dataclass
class _Progress:
    """The state carried from one epoch to the next besides the model's own."""

    epoch: int  # epochs finished
    history: list[EpochRecord]
    grad_sq: dict[str, Tensor]


def check_resume_from(path: Path, model: nn.Module, data: DataBundle, config: TrainConfig) -> None:
    """Raise the ``CheckpointError`` ``train_(..., resume_from=path)`` would raise before changing
    anything (weights only, no or other settings, another model), without training: so that a caller
    can refuse a resume before it touches the run directory."""
    fingerprint = training_fingerprint(model, data, config.for_examples(len(data.train)))
    check_resumable_checkpoint(path, read_checkpoint(path), model, fingerprint)


def _resume(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, shuffle: torch.Generator, fingerprint: dict[str, Any],
    total_epochs: int, device: torch.device,
) -> _Progress:
    """Restore model, optimizer and random streams from ``path``; everything is checked before anything changes."""
    checkpoint = open_for_resume(path, model, fingerprint, training_environment(device))
    with damaged_training_state(path):
        epoch = checkpoint.meta["epoch"]
        if not (isinstance(epoch, int) and 1 <= epoch <= total_epochs):
            raise ValueError(f"epoch {epoch!r} is outside 1..{total_epochs}")
        history = [EpochRecord(**record) for record in checkpoint.meta["history"]]
        if [record.epoch for record in history] != list(range(1, epoch + 1)):
            raise ValueError(f"its history does not list epochs 1..{epoch}")
        training = checkpoint.training
        grad_sq = dict(training["grad_sq"])
        sizes = {name: noise.num_structures for name, noise in noise_modules(model).items()}
        for name, value in grad_sq.items():
            if name not in sizes or not isinstance(value, Tensor) or tuple(value.shape) != (sizes[name],):
                raise ValueError(f"gradient statistics for {name!r} do not fit the model's noise layers")
        load_optimizer_and_check_random_state(training, optimizer)
    grad_sq = {name: value.to(device) for name, value in grad_sq.items()}  # read onto the CPU, summed on the device
    model.load_state_dict(checkpoint.state_dict)
    restore_random_state(training, shuffle, device)
    return _Progress(epoch, history, grad_sq)


def train_(
    model: nn.Module,
    data: DataBundle,
    config: TrainConfig,
    *,
    compression: Callable[[nn.Module], float] = structure_compression,
    checkpoint_path: Path | None = None,
    resume_from: Path | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place per ``config``; returns it with its per-epoch history and the schedule
    it ran. A schedule in steps (``ScheduleUnit.STEPS``) is first rounded to whole epochs of this
    data (``TrainConfig.in_epochs``); everything after, the checkpoint's fingerprint included, sees
    only that epoch config, so a steps recipe trains and resumes exactly as the epochs one it
    resolves to (and resumes the checkpoints that one wrote).

    ``resume_from``: a checkpoint written by an earlier call with the same model, data and config;
    training continues after its last epoch (a finished checkpoint is loaded and returned as is).

    ``on_phase``: called with ``"train"`` or ``"finetune"`` before the first epoch of each phase that
    this call runs (a resume: the phase it resumes in; a finished checkpoint: never), so that a caller
    can measure the phases apart (their energy, say) instead of apportioning the total.
    """
    plan = Schedule.of(config, len(data.train))
    config = plan.config
    device = available_device(config.device, "train.device")
    if config.progress and plan.given_in is ScheduleUnit.STEPS:
        tqdm.write(plan.describe())
    if resume_from is None:
        # A resume takes the random state from the checkpoint instead, and a refused one leaves it alone.
        torch.manual_seed(config.seed)
    noises_by_name = noise_modules(model)
    noises = list(noises_by_name.values())
    criterion = config.criterion
    if criterion is not None and not noises:
        raise ValueError(
            f"train.criterion is {criterion_name(criterion)!r} but the model has no noise layers, so there is nothing "
            "to prune; build it with noise (bmrs.models.build_network(..., noise=NoiseInit())), or set the criterion "
            "to None to train it without pruning"
        )
    starts = prune_starts(model, config)  # a path naming no noise layer fails here, before any epoch
    home = module_device(model)
    model.to(device)  # before the optimizer, whose state lives beside the parameters
    try:
        return _train_on_device(model, data, plan, device, starts, noises_by_name, compression, checkpoint_path, resume_from, on_phase)
    finally:
        model.to(home)


def _train_on_device(
    model: nn.Module, data: DataBundle, plan: Schedule, device: torch.device, starts: dict[str, int],
    noises_by_name: dict[str, LogNormalNoise], compression: Callable[[nn.Module], float], checkpoint_path: Path | None,
    resume_from: Path | None, on_phase: Callable[[str], None] | None,
) -> TrainResult:  # fmt: skip
    config, criterion, noises = plan.config, plan.config.criterion, list(noises_by_name.values())
    optimizer = make_optimizer(model, config.lr)
    shuffle = torch.Generator().manual_seed(config.seed)
    total_epochs = config.epochs + config.finetune_epochs
    fingerprint = training_fingerprint(model, data, config) if checkpoint_path or resume_from else None
    if resume_from is not None:
        progress = _resume(Path(resume_from), model, optimizer, shuffle, fingerprint, total_epochs, device)
    else:
        progress = _Progress(0, [], {})
    history, grad_sq = progress.history, progress.grad_sq
    for epoch in range(progress.epoch, total_epochs):
        phase = "train" if epoch < config.epochs else "finetune"
        if on_phase is not None and (epoch == progress.epoch or epoch == config.epochs):
            on_phase(phase)
        collect_grads = criterion is not None and criterion.needs_gradients and phase == "train"
        expected_noise = phase == "finetune" and config.finetune_noise is FinetuneNoise.EXPECTED
        if expected_noise and noises and epoch == config.epochs:
            # Fine-tune the deployed parametrisation: E[theta] in the weights, and a fresh Adam because
            # the old moments belong to the unscaled weights. A resume past this epoch loads both.
            absorb_expected_noise_(model)
            optimizer = make_optimizer(model, config.lr)
        started = time.perf_counter()
        model.train()
        held = contextlib.ExitStack()
        for noise in noises if expected_noise else ():
            noise.eval()  # theta = E[theta], as deployed
            held.enter_context(noise.hold_mean())  # frozen posteriors: E[theta] once per epoch
        sums = {"loss": 0.0, "nll": 0.0, "kl": 0.0, "correct": 0, "seen": 0}
        bar = tqdm(
            data.train.batches(config.batch_size, generator=shuffle),
            total=plan.steps_per_epoch,
            desc=f"epoch {epoch + 1}/{total_epochs} {phase}",
            disable=not config.progress,
            mininterval=0.5,
            leave=True,
        )
        with held:  # E[theta] is recomputed again after the epoch's steps
            for step, (images, labels) in enumerate(bar):
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                logits = model(images)
                nll = F.cross_entropy(logits, labels)
                penalised = noises and not expected_noise
                kl = kl_penalty(noises, config.kl_weighting, config.kl_scale, len(data.train)) if penalised else nll.new_zeros(())
                loss = nll + kl
                if not torch.isfinite(loss):
                    raise TrainingDivergedError(
                        f"loss became {float(loss.detach())} at epoch {epoch + 1}, step {step + 1} (NLL "
                        f"{float(nll.detach())}, KL term {float(kl.detach())}); lower train.lr (now {config.lr}) or train.kl_scale (now {config.kl_scale}); "
                        f"epochs finished before this one are in the last checkpoint"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                for noise in noises if expected_noise else ():
                    noise.mu.grad = noise.log_sigma.grad = None  # frozen: Adam skips a parameter without a gradient
                optimizer.step()
                if noises:
                    project_log_sigma_(noises)
                if collect_grads:
                    for name, noise in noises_by_name.items():
                        squared = structure_weights(model.get_submodule(noise.source), grad=True).pow(2).sum(1)
                        grad_sq[name] = grad_sq[name] + squared if name in grad_sq else squared
                batch = labels.numel()
                sums["loss"] += float(loss.detach()) * batch
                sums["nll"] += float(nll.detach()) * batch
                sums["kl"] += float(kl.detach()) * batch
                sums["correct"] += int((logits.argmax(1) == labels).sum())
                sums["seen"] += batch
                if step % 50 == 0:
                    bar.set_postfix(loss=f"{sums['loss'] / sums['seen']:.4f}", acc=f"{sums['correct'] / sums['seen']:.3f}")
        keeps = None
        if criterion is not None and phase == "train":
            decisions = prune_decisions(model, criterion, grad_sq, config.min_structures_per_layer)
            keeps = {name: int((~prune).sum()) for name, prune in decisions.items()}
            for name, prune in decisions.items():
                if prunes_after(epoch + 1, starts[name], config.prune_every):
                    noises_by_name[name].prune_(prune)
                    grad_sq.pop(name, None)  # the gradient criterion's statistics restart with each pruning
        val_accuracy, val_nll = evaluate(model, data.val, config.eval_batch_size)
        if not math.isfinite(val_nll):
            # A finite training loss with an infinite validation NLL: weights so large that some
            # class gets probability 0. Nothing trained further from here is worth keeping.
            raise TrainingDivergedError(
                f"the validation NLL became {val_nll} after epoch {epoch + 1}: the weights blew up; lower train.lr "
                f"(now {config.lr}); epochs finished before this one are in the last checkpoint"
            )
        record = EpochRecord(
            epoch=epoch + 1,
            phase=phase,
            loss=sums["loss"] / sums["seen"],
            nll=sums["nll"] / sums["seen"],
            kl=sums["kl"] / sums["seen"],
            train_accuracy=sums["correct"] / sums["seen"],
            val_accuracy=val_accuracy,
            val_nll=val_nll,
            compression=compression(model),
            alive={name: int(noise.mask.sum()) for name, noise in noises_by_name.items()},
            seconds=time.perf_counter() - started,
            criterion_keeps=keeps,
        )
        history.append(record)
        bar.close()
        if config.progress:
            tqdm.write(
                f"epoch {record.epoch}/{total_epochs} {phase}: loss {record.loss:.4f}, train acc "
                f"{record.train_accuracy:.4f}, val acc {val_accuracy:.4f}, compression {record.compression:.1%}, "
                f"{record.seconds:.1f} s"
            )
        if checkpoint_path is not None:
            meta = {
                "epoch": epoch + 1,
                "total_epochs": total_epochs,
                "finished": epoch + 1 == total_epochs,
                "history": [asdict(r) for r in history],
                "fingerprint": fingerprint,
                "environment": training_environment(device),
                "schedule": plan.as_dict(),
            }
            training = {"optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(), "shuffle": shuffle.get_state(), "grad_sq": grad_sq}
            if device.type == "cuda":
                training["cuda_rng"] = torch.cuda.get_rng_state(device)
            save_checkpoint(checkpoint_path, model, meta, training=training)
    for noise in noises:
        noise.train(model.training)  # undo the expected-noise fine-tuning's eval mode: one mode for the whole model
    return TrainResult(model, history, plan)

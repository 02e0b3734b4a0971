"""Checkpoints of a ``sparsify_`` run: ``sparsify.pt`` under the run's directory, rewritten
atomically (``bmrs.train.checkpoint.save_checkpoint``) after every epoch and every dF step, plain
data that loads with ``weights_only=True``.

A checkpoint holds the mean-field model's state dict (posterior means, log-stds and masks), the
optimiser's state, the global random state (the local reparameterisation's draws) and the shuffle
generator's, the records so far and the ``Position`` in the rounds, and the run's fingerprint: the
settings, the starting model (modules, shapes and a digest of its values) and the data. A resume
under another fingerprint is refused, since it could not reproduce the interrupted run.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bmrs.data import DataBundle
from bmrs.sparsify.config import SparsifyConfig
from bmrs.sparsify.records import Position, SparsifyEpoch, SparsifyRound
from bmrs.train.checkpoint import (
    damaged_training_state, load_optimizer_and_check_random_state, open_for_resume, restore_random_state, save_checkpoint,
)
from bmrs.train.loop import training_environment

CHECKPOINT_NAME = "sparsify.pt"


def _digest(tensors: list[Tensor]) -> str:
    hasher = hashlib.blake2b(digest_size=16)
    for tensor in tensors:
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        hasher.update(f"{flat.dtype}{list(tensor.shape)}".encode())
        hasher.update(flat.view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()


def run_fingerprint(model: nn.Module, data: DataBundle, config: SparsifyConfig) -> dict[str, Any]:
    """What a checkpoint's continuation depends on besides its own state: the settings (bar
    ``progress``, and the device, which changes only the last bits), the starting model's modules,
    shapes and values, and the data. Resuming under another fingerprint is refused."""
    settings = {key: value for key, value in config.to_dict().items() if key not in ("progress", "device")}
    state = model.state_dict()
    described = {
        "sparsify": settings,
        "model": {
            "modules": {name or "(root)": f"{type(module).__name__}({module.extra_repr()})" for name, module in model.named_modules()},
            "tensors": {key: f"{tensor.dtype}{list(tensor.shape)}" for key, tensor in state.items()},
            "values": _digest([state[key] for key in sorted(state)]),
        },
        "data": {
            "num_classes": data.num_classes,
            **{f"{name}_digest": f"{len(split)} examples, {_digest([split.images, split.labels])}" for name, split in (("train", data.train), ("val", data.val))},
        },
    }
    return json.loads(json.dumps(described, allow_nan=False))


def _environment(device: torch.device) -> dict[str, Any]:
    return {**training_environment(), "device": str(device)}


def save_run(
    path: Path, meanfield: nn.Module, position: Position, epochs: list[SparsifyEpoch], rounds: list[SparsifyRound],
    fingerprint: dict[str, Any], optimizer: torch.optim.Optimizer, shuffle: torch.Generator, device: torch.device,
) -> None:  # fmt: skip
    meta = {
        "finished": position.finished,
        "position": asdict(position),
        "epochs": [asdict(record) for record in epochs],
        "rounds": [asdict(record) for record in rounds],
        "fingerprint": fingerprint,
        "environment": _environment(device),
    }
    training = {"optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(), "shuffle": shuffle.get_state()}
    if device.type == "cuda":
        training["cuda_rng"] = torch.cuda.get_rng_state(device)
    save_checkpoint(path, meanfield, meta, training=training)


def resume_run(
    path: Path, meanfield: nn.Module, optimizer: torch.optim.Optimizer, shuffle: torch.Generator,
    fingerprint: dict[str, Any], device: torch.device,
) -> tuple[Position, list[SparsifyEpoch], list[SparsifyRound]]:  # fmt: skip
    """Restore the run from ``path``; everything is checked before anything changes."""
    checkpoint = open_for_resume(path, meanfield, fingerprint, _environment(device))
    with damaged_training_state(path):
        meta, training = checkpoint.meta, checkpoint.training
        position = Position(**meta["position"])
        epochs = [SparsifyEpoch(**record) for record in meta["epochs"]]
        rounds = [SparsifyRound(**record) for record in meta["rounds"]]
        if [record.round for record in rounds] != list(range(len(rounds))):
            raise ValueError(f"its rounds are {[record.round for record in rounds]}, not 0, 1, ...")
        load_optimizer_and_check_random_state(training, optimizer)
    meanfield.load_state_dict(checkpoint.state_dict)
    restore_random_state(training, shuffle, device)
    return position, epochs, rounds

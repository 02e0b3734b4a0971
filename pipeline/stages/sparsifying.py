"""The flow's ``sparsify`` stage: BMR on individual weights (Markovic et al. 2023, ``bmrs.sparsify``)
of the model the method trained, resumable like every training stage.

It starts from the trained model folded and sliced exactly as ``shipping.compress_stage`` slices it
(``export.round_to`` included): for a structured method (combined mode, ``bmrs_u+bmr_weights``) the
surviving neurons and filters, for ``train.criterion: null`` (``bmr_weights``) the dense model, which
slicing leaves as it is. ``sparsify_`` fits the mean-field posterior, removes the weights whose
``dF >= 0`` and fine-tunes, checkpointing every epoch and dF step into ``<run>/sparsify/sparsify.pt``;
``resume=True`` continues from there to the bit-identical result. The model keeps its dense shapes
with the removed weights exactly 0; it is written as ``<run>/sparsify/model/`` (``sliced.json`` +
``sliced.pt``, ``export.saved``), and ``result.json`` records the rounds, last, so its presence
means the stage finished. ``compress_stage`` exports that model; the latency stage times it.

Layout, ``<run>/sparsify/``::

    sparsify.pt     the resumable checkpoint (posterior means, log-stds, masks, optimiser, random state)
    model/          sliced.json + sliced.pt: the sparsified model, reloadable by export.saved.load_sliced
    result.json     sparsity, rounds, epochs, each dF step's seconds, the full records
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from bmrs.artifacts import write_json
from bmrs.data import DataBundle
from bmrs.sparsify import CHECKPOINT_NAME, convertible_layers, sparsify_, to_meanfield
from bmrs.sparsify.checkpoints import run_fingerprint
from bmrs.train.checkpoint import check_resumable_checkpoint, read_checkpoint
from export.saved import load_sliced, save_sliced
from export.slicing import SliceResult, slice_model
from pipeline.config import FlowConfig
from pipeline.stages import steps

FOLDER = "sparsify"
MODEL_DIR = "model"  # <run>/sparsify/model/: sliced.json + sliced.pt of the sparsified model
RESULT_FILE = "result.json"


def start_model(config: FlowConfig, data: DataBundle, checkpoint: Path) -> SliceResult:
    """The trained model folded and sliced as ``compress_stage`` slices it: what sparsification starts
    from. Deterministic, so the stage, its resume check and the export all see the same model."""
    noisy = config.train.criterion is not None
    trained = steps.restore(config, data, checkpoint, noisy=noisy)
    return slice_model(trained, steps.example_input(data), round_to=config.export.round_to)


def check_sparsifiable(config: FlowConfig, model: nn.Module) -> None:
    """Refuse, before a run directory exists, a model the stage could not sparsify: no Linear/Conv2d
    layer, or only the output layer while ``sparsify.prune_output_layer`` spares it."""
    layers = list(convertible_layers(model))
    if not layers:
        raise ValueError(f"sparsify.enabled: the model {config.model.name!r} has no Linear or Conv2d layer whose weights "
                         "BMR could remove; turn sparsify off (--set sparsify.enabled=false)")  # fmt: skip
    if len(layers) == 1 and not config.sparsify.prune_output_layer:
        raise ValueError(
            f"sparsify.enabled: the model's only Linear/Conv2d layer ({layers[0]!r}) is its output layer, which "
            "sparsify.prune_output_layer=false spares, so nothing could be removed; set sparsify.prune_output_layer=true "
            "or sparsify.enabled=false"
        )


def sparsify_stage(config: FlowConfig, data: DataBundle, run_dir: Path, checkpoint: Path, *, resume: bool = False) -> dict[str, Any]:
    """Sparsify the trained model of ``checkpoint`` (see the module docstring); returns the report's
    ``sparsify`` section. ``resume``: continue from the stage's checkpoint when there is one (a
    finished one is only loaded)."""
    folder = Path(run_dir) / FOLDER
    start = start_model(config, data, checkpoint)
    model = start.model
    result = sparsify_(model, data, config.sparsify_config(), checkpoint_dir=folder, resume=resume)
    save_sliced(folder / MODEL_DIR, model, model_config=config.model, input_shape=data.input_shape,
                num_classes=data.num_classes, keep=start.keep)  # fmt: skip
    rounds = result.rounds
    last = rounds[-1]
    settings = {key: value for key, value in config.sparsify_config().to_dict().items() if key != "progress"}
    summary = {
        "sparsity": result.sparsity,
        "weights": last.total,
        "weights_kept": last.alive,
        "rounds": len(rounds) - 1,  # dF steps run; round 0 is the initial fit
        "epochs": len(result.epochs),
        "stopped_early": result.stopped_early,
        "removed_per_round": [record.pruned for record in rounds[1:]],
        "df_step_seconds": [record.prune_seconds for record in rounds if record.prune_seconds is not None],
        "epoch_seconds_mean": _mean([record.seconds for record in result.epochs]),
        "val_accuracy": last.accuracy,
        "val_nll": last.nll,
        "val_ece": last.ece,
        "structured_compression": start.compression,
        "model": f"{FOLDER}/{MODEL_DIR}",  # relative to the run directory
        "settings": settings,
    }
    write_json(folder / RESULT_FILE, {**summary, "record": result.as_dict()})
    return summary


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def load_sparsified(run_dir: Path) -> nn.Module:
    """The sparsified model the stage wrote into ``run_dir``, in evaluation mode."""
    path = Path(run_dir) / FOLDER / MODEL_DIR
    if not (Path(run_dir) / FOLDER / RESULT_FILE).is_file():
        raise ValueError(f"{str(path)!r}: the sparsify stage has not finished in this run; `bmrs resume {run_dir}` runs it")
    return load_sliced(path)


def read_result(run_dir: Path) -> dict[str, Any] | None:
    """``result.json`` of a finished stage, without its full records; None when there is none."""
    try:
        result = json.loads((Path(run_dir) / FOLDER / RESULT_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(result, dict):
        return None
    result.pop("record", None)
    return result


def checkpoint_path(run_dir: Path) -> Path:
    return Path(run_dir) / FOLDER / CHECKPOINT_NAME


def check_resumable(config: FlowConfig, data: DataBundle, run_dir: Path) -> None:
    """Refuse (``CheckpointError``) a stage checkpoint the stage would refuse to resume from (other
    settings, another starting model or data, no training state), before anything is written. Only
    once training finished: before that no stage checkpoint can be valid, and the training stage
    comes first anyway."""
    path = checkpoint_path(run_dir)
    trained = Path(run_dir) / "train" / "checkpoint.pt"
    if not config.sparsify.enabled or not path.is_file() or not trained.is_file():
        return
    if read_checkpoint(trained).meta.get("finished") is not True:
        return
    start = start_model(config, data, trained).model
    settings = config.sparsify_config()
    meanfield = to_meanfield(start, prior_std=settings.prior_std, output_prior_std=settings.output_prior_std,
                             init_std=settings.init_std)  # fmt: skip
    check_resumable_checkpoint(path, read_checkpoint(path), meanfield, run_fingerprint(start, data, settings))

"""The flow's stages as plain functions over a run directory (no Prefect here, so each is testable);
the ones that produce the shipped files are in ``shipping``.

Run directory layout, ``runs/<flow>/<run-id>/``::

    config.json          the resolved FlowConfig
    status.json          running | failed (with the error) | completed | degraded (with the warning)
    train/               checkpoint.pt (every epoch), history.json and curve.png of the pruned model
    baseline/            the same for the dense "None" model
    sparsify/            with sparsify.enabled: sparsify.pt (every epoch and dF step, resumable),
                         model/ (the sparsified model) and result.json (pipeline.stages.sparsifying)
    model.onnx           the sliced model (with sparsify.enabled: the sparsified one, dense-with-zeros);
                         dense.onnx: the dense reference; each compared on real
                         test examples with the PyTorch model whose accuracy is reported, each
                         with bmrs.* metadata (method, compression, accuracy, version)
    sliced/              sliced.json + sliced.pt: the sliced PyTorch model (a state dict and the
                         architecture it slots into; export.saved.load_sliced reloads it)
    bench/latency.json   ONNX Runtime and PyTorch eager latencies and throughputs
    bench/energy.json    with energy.enabled: dense and pruned energy per 1,000 inferences, every window
    bench/energy_stages.json  each stage's energy, every attempt, written as the stage ends
    post_training/       with post_training.enabled: checkpoint.pt and history.json of the unpruned
                         noisy model, <criterion>.json per criterion (its pruning curve), curves.png
    report.md            the report a person reads (``bmrs report RUN_DIR`` rebuilds it)
    report.json          written last: its presence means the run finished (completed, or degraded:
                         its ``checks`` section says which sanity bound failed)

``bmrs resume`` runs the same stages into an existing directory with ``resume=True``.
"""
from __future__ import annotations

import json
import math
import secrets
import time
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from benchmarks.energy_pair import check_energy_config
from benchmarks.latency import check_runtimes, measure_latency, measure_torch_latency
from benchmarks.plots import Series, line_plot
from bmrs.artifacts import write_json
from bmrs.devices import available_device
from bmrs.train.checkpoint import load_checkpoint
from bmrs import data as bmrs_data
from bmrs.criteria import changed_settings
from bmrs.data import DataBundle
from bmrs.train.metrics import classification_metrics
from bmrs.models import build_network
from bmrs.train import TrainConfig, train_
from bmrs.train.pruning import prune_starts
from export.slicing import check_sliceable, parameter_compression, slice_model
from pipeline.stages.checks import RunFacts, chance_accuracy, evaluate_checks
from pipeline.config import FlowConfig


class RunState(str, Enum):
    """``status.json``'s state. A str, so that the file holds the plain value."""

    RUNNING = "running"
    FAILED = "failed"
    COMPLETED = "completed"
    DEGRADED = "degraded"  # finished, but a model failed a sanity bound (report.json's checks)


def new_run_dir(config: FlowConfig) -> Path:
    """A new run directory ``<runs_dir>/<flow>/<run-id>/``, never one another process also took."""
    return _write_start(config, new_unique_dir(Path(config.output.runs_dir) / config.name))


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


UNIQUE_DIR_ATTEMPTS = 1000


def new_unique_dir(parent: Path) -> Path:
    """Create and return a new folder of ``parent`` named by ``new_run_id()``. Two `bmrs run` of one
    flow started in the same second into one runs directory draw the same time and, once in 65,536
    times, the same random part: ``mkdir`` without ``exist_ok`` is atomic (on local and network file
    systems alike), so exactly one process gets a name and the other takes the name with ``-2``
    (``-3``, ...) appended, instead of both writing into one directory."""
    parent.mkdir(parents=True, exist_ok=True)
    run_id = new_run_id()
    for attempt in range(1, UNIQUE_DIR_ATTEMPTS + 1):
        candidate = parent / (run_id if attempt == 1 else f"{run_id}-{attempt}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"{UNIQUE_DIR_ATTEMPTS} run directories named {run_id}* already exist in {str(parent)!r}; "
                          "wait a second and start the run again")  # fmt: skip


def start_run_dir(config: FlowConfig, run_dir: Path) -> Path:
    """Create ``run_dir`` (it must not exist yet) holding ``config.json`` and a running status."""
    run_dir.mkdir(parents=True, exist_ok=False)
    return _write_start(config, run_dir)


def _write_start(config: FlowConfig, run_dir: Path) -> Path:
    write_json(run_dir / "config.json", config.to_dict())
    set_status(run_dir, RunState.RUNNING)
    return run_dir


def set_status(run_dir: Path, state: RunState | str, error: str | None = None) -> None:
    """``error``: why the run failed, or (degraded) the warning naming the bound that failed."""
    state = RunState(state)
    write_json(run_dir / "status.json", {"state": state.value, "error": error, "time": time.strftime("%Y-%m-%dT%H:%M:%S")})


def load_data(config: FlowConfig) -> DataBundle:
    return bmrs_data.load_data(config.data)


def build(config: FlowConfig, data: DataBundle, *, noisy: bool) -> nn.Module:
    """The model, with noise layers at the family's noise points when ``noisy``."""
    noise = config.noise if noisy else None
    return build_network(config.model, data.input_shape, data.num_classes, noise=noise, seed=config.train.seed)


def check_model(config: FlowConfig, data: DataBundle) -> None:
    """Build the noisy model once, resolve every layer path the settings name (noise points,
    ``noise.start_on``, ``train.prune_start_by_layer``) and check that its pruned structures slice
    exactly, so that a typo or an inexact noise point fails before a run directory exists or a
    baseline has trained. (The check slices a copy once per layer: done here, not at every build.)"""
    available_device(config.train.device, "train.device")  # a GPU this machine lacks fails before anything trains
    model = build(config, data, noisy=True)
    prune_starts(model, config.train)
    check_sliceable(model, example_input(data))
    check_runtimes(config.latency)  # a provider or device this machine lacks fails now, not after training
    check_energy_config(config.energy)  # a country codecarbon's offline table lacks, likewise
    if config.sparsify.enabled:  # a model whose weights BMR could not remove, likewise
        from pipeline.stages.sparsifying import check_sparsifiable

        check_sparsifiable(config, build(config, data, noisy=False))


def example_input(data: DataBundle, batch: int = 2) -> torch.Tensor:
    return data.test.images[:batch]


def train_stage(
    config: FlowConfig,
    data: DataBundle,
    run_dir: Path,
    *,
    baseline: bool,
    resume: bool = False,
    on_phase: Callable[[str], None] | None = None,
) -> Path:
    """Train (the pruned method, or the dense baseline); returns the checkpoint path.

    ``resume``: continue from the stage's checkpoint when there is one (a finished one is only
    loaded, not retrained), to the same result an uninterrupted run reaches.
    ``on_phase``: ``train_``'s hook, told "train" / "finetune" as each phase starts (the flow's energy stages).
    """
    if baseline:
        dense_config = replace(config.train, criterion=None)
        return train_into(run_dir / "baseline", config, data, dense_config, noisy=False, resume=resume, on_phase=on_phase)[0]
    noisy = config.train.criterion is not None
    folder = run_dir / "train"
    checkpoint, history = train_into(folder, config, data, config.train, noisy=noisy, resume=resume, on_phase=on_phase)
    plot_training_curve(folder / "curve.png", history, title=f"{config.name}: {config.method} while training")
    return checkpoint


def train_into(
    folder: Path,
    config: FlowConfig,
    data: DataBundle,
    train_config: TrainConfig,
    *,
    noisy: bool,
    resume: bool = False,
    on_phase: Callable[[str], None] | None = None,
) -> tuple[Path, list[dict[str, Any]]]:
    """Train a fresh model of ``config`` (with noise layers when ``noisy``) under ``train_config``,
    checkpointing every epoch to ``folder/checkpoint.pt``; writes ``folder/history.json``.
    Returns the checkpoint's path and the per-epoch history.

    ``resume``: continue from that checkpoint when there is one (a finished one is only loaded)."""
    checkpoint = folder / "checkpoint.pt"
    model = build(config, data, noisy=noisy)
    sample = example_input(data)
    measure = (lambda m: parameter_compression(m, sample)) if noisy else (lambda m: 0.0)
    resume_from = checkpoint if resume and checkpoint.is_file() else None
    result = train_(model, data, train_config, compression=measure, checkpoint_path=checkpoint, resume_from=resume_from,
                    on_phase=on_phase)
    history = result.as_dict()
    write_json(folder / "history.json", history)
    return checkpoint, history


def plot_training_curve(path: Path, history: list[dict[str, Any]], *, title: str) -> Path:
    """Validation accuracy and compression after every epoch (fine-tuning epochs included), in percent."""
    epochs = [record["epoch"] for record in history]
    return line_plot(
        path,
        [
            Series("val accuracy", epochs, [100.0 * record["val_accuracy"] for record in history]),
            Series("compression", epochs, [100.0 * record["compression"] for record in history]),
        ],
        xlabel="epoch",
        ylabel="%",
        title=title,
    )


def restore(config: FlowConfig, data: DataBundle, checkpoint: Path, *, noisy: bool) -> nn.Module:
    model = build(config, data, noisy=noisy)
    load_checkpoint(checkpoint, model)
    return model.eval()


def _test_metrics(model: nn.Module, data: DataBundle) -> dict[str, float]:
    return classification_metrics(model, data.test).as_dict()


def checks_stage(
    config: FlowConfig, data: DataBundle, run_dir: Path, dense: dict[str, Any], pruned: dict[str, Any]
) -> dict[str, Any]:
    """The report's ``checks``: the shipped models' accuracies against ``config.checks``' bounds."""
    facts = RunFacts(
        train_examples=len(data.train),
        steps_per_epoch=math.ceil(len(data.train) / config.train.batch_size),
        lr=config.train.lr,
        method=config.method,
        best_val_accuracy=_best_val_accuracy(run_dir / "train" / "history.json"),
        sparsified=config.sparsify.enabled,
        structured=config.train.criterion is not None,
    )
    return evaluate_checks(
        config.checks, chance=chance_accuracy(data.test.labels), pruned=pruned["accuracy"], dense=dense["accuracy"], facts=facts
    )


def _best_val_accuracy(history_path: Path) -> float | None:
    """The best validation accuracy over the training epochs (fine-tuning left out) of a history."""
    try:
        history = json.loads(history_path.read_text())
        values = [float(record["val_accuracy"]) for record in history if record.get("phase") == "train"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None
    return max(values, default=None)


def latency_stage(config: FlowConfig, data: DataBundle, run_dir: Path) -> dict[str, Any]:
    """Time ``dense.onnx`` and ``model.onnx`` through ONNX Runtime, and the PyTorch modules they were
    exported from eagerly (on ``latency.torch_devices``; none when it is ``[]``), dense and pruned
    interleaved. ``bench/latency.json``: ORT's full report, with PyTorch's under ``torch_eager``.
    Returns the report's ``latency``: per runtime (ORT provider, ``torch-cpu``, ``torch-cuda``) and
    batch size, each model's p50/p90/p99 and throughput, and the p50 speed-up."""
    report = measure_latency(
        {"dense": run_dir / "dense.onnx", "pruned": run_dir / "model.onnx"}, data.input_shape, config.latency
    ).to_dict()
    by_runtime = dict(report["by_provider"])
    if config.latency.torch_devices != ():
        torch_report = measure_torch_latency(_exported_modules(config, data, run_dir), data.input_shape, config.latency).to_dict()
        report["torch_eager"] = torch_report
        by_runtime.update(torch_report["by_provider"])
    write_json(run_dir / "bench" / "latency.json", report)
    return {
        runtime: {
            batch: {
                **{f"{name}_{stat}": row[name][stat] for stat in ("p50_ms", "p90_ms", "p99_ms") for name in ("dense", "pruned")},
                **{f"{name}_throughput_per_s": row[name]["throughput_per_s"] for name in ("dense", "pruned")},
                "speedup_p50": row.get("speedup_p50"),
                # its spread within this measurement: min and max over blocks of the repeats
                **{key: row[key] for key in ("speedup_p50_min", "speedup_p50_max") if key in row},
            }
            for batch, row in by_batch.items()
        }
        for runtime, by_batch in by_runtime.items()
    }


def _exported_modules(config: FlowConfig, data: DataBundle, run_dir: Path) -> dict[str, nn.Module]:
    """The PyTorch modules ``dense.onnx`` and ``model.onnx`` were exported from, rebuilt from the run's
    checkpoints exactly as ``dense_stage`` and ``compress_stage`` build them (both deterministic), so
    that the flow's stages keep exchanging paths and summaries, not modules. With ``sparsify.enabled``
    the pruned one is the ``sparsify`` stage's model, as ``compress_stage`` exports it."""
    dense_checkpoint = run_dir / "baseline" / "checkpoint.pt"
    if config.baseline.enabled:
        dense = restore(config, data, dense_checkpoint, noisy=False)
    else:
        dense = build(config, data, noisy=False).eval()
    if config.sparsify.enabled:
        from pipeline.stages.sparsifying import load_sparsified

        return {"dense": dense, "pruned": load_sparsified(run_dir)}
    noisy = config.train.criterion is not None
    masked = restore(config, data, run_dir / "train" / "checkpoint.pt", noisy=noisy)
    return {"dense": dense, "pruned": slice_model(masked, example_input(data), round_to=config.export.round_to).model.eval()}


def report_stage(
    config: FlowConfig,
    run_dir: Path,
    dense: dict[str, Any],
    pruned: dict[str, Any],
    latency: dict[str, Any],
    seconds: float,
    post_training: dict[str, Any] | None = None,
    checks: dict[str, Any] | None = None,
    energy: dict[str, Any] | None = None,
    sparsify: dict[str, Any] | None = None,
) -> Path:
    """``post_training``: the post-training stage's summary; null in the report when it did not run.
    ``checks``: ``checks_stage``'s result; when a bound failed the run ends ``degraded``, its warning
    in ``status.json``. ``energy``: ``pipeline.stages.energy``'s section; null when energy is off.
    ``sparsify``: the ``sparsify`` stage's summary (``sparsifying.sparsify_stage``); null when it is off."""
    pruned = dict(pruned)  # the caller's dict stays whole: a retried stage gets the same one again
    pruned_onnx = pruned.pop("onnx")
    report = {
        "flow": config.name,
        "run_dir": str(run_dir),
        "dataset": config.data.dataset,
        "model": config.model.name,
        "method": config.method,
        "settings": {
            # The settings that differ from the criterion's defaults, as the flow would write them.
            "criterion_settings": {} if config.train.criterion is None else changed_settings(config.train.criterion),
            "kl_weighting": config.train.kl_weighting.value,
            "finetune_noise": config.train.finetune_noise.value,
            # BMR on weights: every setting of the sparsify section, or null when it did not run.
            "sparsify": config.to_dict()["sparsify"] if config.sparsify.enabled else None,
        },
        "dense": dense,
        "pruned": pruned,
        "onnx": pruned_onnx,
        "latency": latency,
        "training_curve": str(run_dir / "train" / "curve.png"),
        "post_training": post_training,
        "sparsify": sparsify,
        "checks": checks,
        "energy": energy,
        "units": {
            "flops": "multiply-accumulates per example (torch-pruning's count)",
            "latency": "milliseconds per batch",
            "throughput_per_s": "examples per second at the median latency (batch size / p50)",
            "nll": "nats per example",
            "weight_sparsity": "fraction of the shipped Linear/Conv2d weights that are exactly 0",
            "total_removed": "1 - nonzero parameters of the shipped model / parameters of the dense model",
            "sparse_encoding": "bytes: the ONNX file (dense, zeros included), deflated at zlib level 9, "
                               "and with the Linear/Conv2d weights in CSR form (int32 indices)",
            "ece": "expected calibration error, 15 equal-width confidence bins",
            "energy": "kWh and kg CO2-eq per stage; J and g CO2-eq per 1,000 examples for inference",
        },
        "wall_seconds": seconds,
        "torch_version": torch.__version__,
        # The kernels' instruction set (AVX2, AVX512, ...): float results, and so a seed's training,
        # are reproducible bit for bit only on the same one.
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    write_json(run_dir / "report.json", report)
    if checks is not None and not checks["passed"]:
        set_status(run_dir, RunState.DEGRADED, checks["warning"])
    else:
        set_status(run_dir, RunState.COMPLETED)
    from pipeline.reporting.run_report import write_run_report_or_warn

    write_run_report_or_warn(run_dir)
    return run_dir / "report.json"


def degraded_warning(run_dir: Path) -> str | None:
    """The warning of a finished run whose report's checks failed; None when they passed, the report
    predates the checks, or there is no readable report."""
    try:
        report = json.loads((Path(run_dir) / "report.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    checks = report.get("checks") if isinstance(report, dict) else None
    if not isinstance(checks, dict) or checks.get("passed", True):
        return None
    return str(checks.get("warning") or "a sanity bound failed (report.json's checks)")

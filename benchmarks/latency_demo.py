"""Dense vs pruned LeNet5 latency on this machine, through ONNX Runtime and PyTorch eager, on every
device available: ``python -m benchmarks.latency_demo --out DIR``.

Needs only torch, numpy, onnx and onnxruntime (no training, data, Prefect or torch-pruning): the
pruned model is LeNet5 built directly at pruned widths, which is the network slicing a pruned LeNet5
leaves. Both get random weights (seeded); latency does not depend on their values. Writes
``dense.onnx``, ``pruned.onnx`` and ``latency.json`` (ORT's report, PyTorch's under ``torch_eager``,
the widths and the ORT-vs-PyTorch output difference) to DIR and prints one table.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from benchmarks.latency import (
    LatencyConfig,
    LatencyReport,
    Provider,
    available_providers,
    available_torch_devices,
    measure_latency,
    measure_torch_latency,
    open_session,
)
from bmrs.artifacts import write_json
from bmrs.models.families import LENET5_WIDTHS, LeNet5

INPUT_SHAPE = (1, 28, 28)  # Fashion-MNIST, as the default flow
NUM_CLASSES = 10
PRUNED_WIDTHS = (6, 10, 20, 20)


def build(widths: tuple[int, ...], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return LeNet5(INPUT_SHAPE[0], INPUT_SHAPE[1], NUM_CLASSES, widths=widths).eval()


def export(model: nn.Module, path: Path) -> Path:
    """ONNX with a dynamic batch axis. The TorchScript exporter first: it needs no onnxscript;
    the dynamo exporter (which does) only where a torch build no longer has the former."""
    example = torch.randn(2, *INPUT_SHAPE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        try:
            torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=["x"], output_names=["logits"],
                              dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})  # fmt: skip
        except Exception as legacy_error:  # noqa: BLE001  (any failure: try the other exporter, report both)
            try:
                torch.onnx.export(model, (example,), str(path), dynamo=True, input_names=["x"], output_names=["logits"],
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=65536)},))  # fmt: skip
            except Exception as dynamo_error:
                raise RuntimeError(f"ONNX export failed: TorchScript exporter: {legacy_error}; dynamo exporter: "
                                   f"{dynamo_error}") from dynamo_error  # fmt: skip
    return path


def max_abs_diff(model: nn.Module, path: Path, batch: int = 64) -> float:
    """How far the ONNX file's logits are from the module's on one random batch (CPU)."""
    x = np.random.default_rng(1).standard_normal((batch, *INPUT_SHAPE), dtype=np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    return float(np.abs(session.run(None, {session.get_inputs()[0].name: x})[0] - expected).max())


def usable_providers(path: Path) -> tuple[Provider, ...]:
    """The providers onnxruntime offers that also open a session: onnxruntime-gpu offers CUDA even
    where its CUDA libraries fail to load, and the benchmark refuses a silent fallback to CPU."""
    usable = []
    for provider in available_providers():
        try:
            open_session(path, provider)
        except RuntimeError as error:
            print(f"skipping {provider.value}: {error}", file=sys.stderr)
        else:
            usable.append(provider)
    return tuple(usable)


def table(*reports: LatencyReport) -> str:
    header = f"{'runtime':<22} {'batch':>5} {'model':<7} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'examples/s':>12} {'speedup':>8}"
    lines = [header, "-" * len(header)]
    for report in reports:
        for result in report.results:
            for batch in result.batches:
                for name, stats in batch.models:
                    speedup = f"{batch.speedup_p50:.2f}x" if name == "pruned" and batch.speedup_p50 else ""
                    throughput = f"{stats.throughput_per_s:,.0f}" if stats.throughput_per_s else "-"
                    lines.append(f"{result.provider.value:<22} {batch.batch_size:>5} {name:<7} {stats.p50_ms:>9.4f} "
                                 f"{stats.p90_ms:>9.4f} {stats.p99_ms:>9.4f} {throughput:>12} {speedup:>8}")  # fmt: skip
    return "\n".join(lines)


def run(out: Path, config: LatencyConfig, pruned_widths: tuple[int, ...] = PRUNED_WIDTHS) -> dict:
    """Build, export, check and time both models on every ORT provider and torch device that works
    here (``config`` gives the rest: batch sizes, warm-up, repeats, threads, seed); returns what
    ``latency.json`` holds."""
    out.mkdir(parents=True, exist_ok=True)
    models = {"dense": build(LENET5_WIDTHS), "pruned": build(pruned_widths)}
    paths = {name: export(model, out / f"{name}.onnx") for name, model in models.items()}
    diffs = {name: max_abs_diff(models[name], path) for name, path in paths.items()}
    config = replace(config, providers=usable_providers(paths["dense"]), torch_devices=available_torch_devices())
    ort_report = measure_latency(paths, INPUT_SHAPE, config)
    torch_report = measure_torch_latency(models, INPUT_SHAPE, config)
    print(table(ort_report, torch_report))
    torch_info = torch_report.torch or {}
    print(f"\nonnxruntime {ort.__version__} (intra-op threads: {config.intra_op_threads or 'default'}), "
          f"torch {torch_info.get('torch_version')} (intra-op threads: {torch_info.get('intra_op_threads')}), "
          f"devices: {torch_info.get('devices')}")  # fmt: skip
    result = {
        "widths": {"dense": list(LENET5_WIDTHS), "pruned": list(pruned_widths)},
        "onnx_vs_torch_max_abs_diff": diffs,
        **ort_report.to_dict(),
        "torch_eager": torch_report.to_dict(),
    }
    write_json(out / "latency.json", result)
    print(f"wrote {out / 'latency.json'}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency_demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the ONNX files and latency.json")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads of ORT and torch (default: theirs)")
    parser.add_argument("--pruned-widths", type=int, nargs=4, default=list(PRUNED_WIDTHS), metavar=("CONV1", "CONV2", "FC1", "FC2"))
    args = parser.parse_args(argv)
    try:
        config = LatencyConfig(
            batch_sizes=tuple(args.batch_sizes), warmup=args.warmup, repeats=args.repeats, intra_op_threads=args.threads
        )  # fmt: skip
        run(args.out, config, tuple(args.pruned_widths))
    except (ValueError, TypeError) as error:
        print(f"latency_demo: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

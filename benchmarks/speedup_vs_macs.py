"""Realized ONNX Runtime CPU speed-up of sliced models against their MACs reduction, per model family.

    python -m benchmarks.speedup_vs_macs [--models resnet20 lenet5 mobilenet_v2 vit_tiny] [--fraction 0.5]
        [--round-to 8 16] [--batch 256] [--warmup 10] [--repeats 100] [--threads N] [--out PATH]

Each model is built untrained for Fashion-MNIST-like inputs (1x28x28, 10 classes) with noise where its
family puts it (``bmrs.models.build_network``). The dense model is its noise folded away
(``bmrs.nn.fold.fold_noise``) before anything is pruned: the plain network at full width. Then about
``fraction`` of every group's channels is removed at random (``bmrs.nn.groups.prune_at_random_``) and
the model is sliced (``export.slicing.slice_model``) with ``round_to`` off and once per ``--round-to``
value, every sliced width rounded up to a multiple of it. The networks are exported to ONNX
(``export.onnx_export.export_onnx``, checked against PyTorch) and timed by the product's own
``benchmarks.latency.measure_latency`` (what the flow's ``latency_stage`` runs) on ONNX Runtime's
CPU provider at one batch size, all interleaved in one round-robin so drift lands on each alike.

The masks are random, and so are the weights: latency depends only on the layers' widths, not on
the values in them, so a random mask of a given share measures the same runtime a trained one of the
same widths would. It does not say which accuracy such a model would reach.

Per model and ``round_to`` the result holds the MACs (multiply-accumulates per example) of the dense
and the sliced model, the MACs reduction (dense / sliced), the parameter compression, the p50
latencies, the speed-up (dense p50 / sliced p50) and the ratio speed-up / MACs reduction: 1.0 means
the runtime turns every MAC removed into time saved; below 1.0, fixed costs (memory traffic, layers
not pruned, operator overheads, kernels less efficient at narrow or odd widths) eat part of it.
Results go to ``benchmarks/results/speedup_vs_macs.json`` and a Markdown table beside it (``.md``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import onnxruntime as ort
import torch

from benchmarks.latency import DENSE_NAME, LatencyConfig, LatencyReport, Provider, describe_machine, measure_latency
from bmrs.artifacts import write_json
from bmrs.models import ModelConfig, NoiseInit, build_network
from bmrs.nn.fold import fold_noise
from bmrs.nn.groups import prune_at_random_
from export.onnx_export import export_onnx
from export.slicing import SliceResult, slice_model, surviving_widths

RESULTS = Path(__file__).parent / "results" / "speedup_vs_macs.json"
INPUT_SHAPE = (1, 28, 28)  # Fashion-MNIST, as the default flow
NUM_CLASSES = 10
DEFAULT_MODELS = ("resnet20", "lenet5", "mobilenet_v2", "vit_tiny")
TARGET_RATIO = 0.8  # issue 13: realized speed-up at least 0.8 of the MACs reduction
RATIO_MEANING = (
    "ratio = speed-up / MACs reduction, speed-up = dense p50 / sliced p50 (ONNX Runtime CPU, dense and sliced "
    "interleaved), MACs reduction = dense MACs / sliced MACs: 1.0 means every MAC removed is time saved; "
    "below 1.0, fixed costs (memory traffic, unpruned layers, operator overheads, kernels slower at narrow or "
    "odd widths) eat part of it."
)
MASKS_NOTE = (
    "Channels are removed at random and the weights are untrained: latency depends only on the layers' "
    "widths, not on the values in them, so this measures the runtime a trained model of the same widths would have."
)


def sliced_name(round_to: int | None) -> str:
    """The name a sliced model is timed under, by its rounding."""
    return "sliced" if round_to is None else f"sliced_round_to_{round_to}"


def measure_model(name: str, fraction: float, round_to: tuple[int, ...], config: LatencyConfig, *,
                  seed: int = 0) -> list[dict]:  # fmt: skip
    """One row per rounding in (None, *``round_to``) for model family ``name``: sizes, p50 latencies,
    speed-up and ratio at ``config``'s single batch size on ONNX Runtime's CPU provider."""
    model = build_network(ModelConfig(name), INPUT_SHAPE, NUM_CLASSES, noise=NoiseInit(), seed=seed).eval()
    # Folded before pruning: the dense network keeps every channel, as an unpruned export would.
    dense = fold_noise(model)[0].eval()
    prune_at_random_(model, fraction, seed=seed)
    example = torch.randn(2, *INPUT_SHAPE, generator=torch.Generator().manual_seed(seed))
    slices = {rounding: slice_model(model, example, round_to=rounding) for rounding in (None, *round_to)}
    with tempfile.TemporaryDirectory(prefix=f"speedup_{name}_") as scratch:
        paths = {DENSE_NAME: export_onnx(dense, example[:1], Path(scratch) / "dense.onnx").path}
        for rounding, result in slices.items():
            label = sliced_name(rounding)
            paths[label] = export_onnx(result.model.eval(), example[:1], Path(scratch) / f"{label}.onnx").path
        report = measure_latency(paths, INPUT_SHAPE, config)
    dense_widths = surviving_widths(dense)
    return [_row(name, rounding, result, dense_widths, report, config) for rounding, result in slices.items()]


def _row(name: str, round_to: int | None, result: SliceResult, dense_widths: dict[str, int], report: LatencyReport,
         config: LatencyConfig) -> dict:  # fmt: skip
    batch = report.batch(config.batch_sizes[0], Provider.CPU)
    dense_p50 = batch.stats(DENSE_NAME).p50_ms
    sliced_p50 = batch.stats(sliced_name(round_to)).p50_ms
    macs_reduction = result.dense_flops / result.pruned_flops
    # Below the timer's resolution a speed-up means nothing; JSON gets null rather than inf.
    speedup = dense_p50 / sliced_p50 if sliced_p50 > 0 else None
    ratio = speedup / macs_reduction if speedup is not None else None
    return {
        "model": name,
        "round_to": round_to,
        "macs_dense": result.dense_flops,
        "macs_pruned": result.pruned_flops,
        "macs_reduction": macs_reduction,
        "params_dense": result.dense_params,
        "params_pruned": result.pruned_params,
        "compression": result.compression,
        "compression_unrounded": result.compression_unrounded,
        "dense_p50_ms": dense_p50,
        "pruned_p50_ms": sliced_p50,
        "dense_p90_ms": batch.stats(DENSE_NAME).p90_ms,
        "pruned_p90_ms": batch.stats(sliced_name(round_to)).p90_ms,
        "speedup": speedup,
        "ratio": ratio,
        "meets_target": None if ratio is None else ratio >= TARGET_RATIO,
        "widths_dense": dense_widths,
        "widths_pruned": dict(result.widths),
    }


def run(models: list[str], fraction: float, round_to: tuple[int, ...], config: LatencyConfig, *, seed: int = 0) -> dict:
    """Measure every model; return what the JSON file holds."""
    rows = []
    for name in models:
        model_rows = measure_model(name, fraction, round_to, config, seed=seed)
        for row in model_rows:
            print(f"{name:<13} round_to={str(row['round_to']):<5} MACs /{row['macs_reduction']:.2f}, "
                  f"speed-up {_fmt(row['speedup'], '.2f')}x, ratio {_fmt(row['ratio'], '.2f')}", flush=True)  # fmt: skip
        rows.extend(model_rows)
    return {
        "meaning": RATIO_MEANING,
        "masks": MASKS_NOTE,
        "target_ratio": TARGET_RATIO,
        "fraction": fraction,
        "round_to": list(round_to),
        "batch_size": config.batch_sizes[0],
        "seed": seed,
        "input_shape": list(INPUT_SHAPE),
        "num_classes": NUM_CLASSES,
        "provider": Provider.CPU.value,
        "onnxruntime_version": ort.__version__,
        "torch_version": torch.__version__,
        # None: ONNX Runtime's default, one intra-op thread per physical core.
        "threads": config.intra_op_threads,
        "thread_spinning": config.thread_spinning,
        "warmup": config.warmup,
        "repeats": config.repeats,
        "machine": describe_machine(),
        "rows": rows,
    }


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(result: dict) -> str:
    """The rows as a Markdown table, with what the ratio means and how it was measured."""
    machine = result["machine"]
    threads = result["threads"] if result["threads"] is not None else "ONNX Runtime's default (one per physical core)"
    lines = [
        "# Realized speed-up against MACs reduction",
        "",
        f"ONNX Runtime {result['onnxruntime_version']} CPU provider, batch {result['batch_size']}, "
        f"{result['warmup']} warm-up and {result['repeats']} timed runs per model, dense and sliced interleaved; "
        f"intra-op threads: {threads}. Machine: {machine.get('processor')} ({machine.get('vector_isa')}), {machine.get('usable_cpu_count')} usable "
        f"of {machine.get('cpu_count')} CPUs. Input {'x'.join(map(str, result['input_shape']))}, "
        f"{result['num_classes']} classes, about {result['fraction']:.0%} of every group's channels removed.",
        "",
        RATIO_MEANING + f" Target: ratio >= {result['target_ratio']}.",
        "",
        MASKS_NOTE,
        "",
        "| model | round_to | MACs dense | MACs sliced | MACs reduction | params compression | p50 dense ms | "
        "p50 sliced ms | speed-up | ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['model']} | {row['round_to'] if row['round_to'] is not None else 'off'} | {row['macs_dense']:,} | "
            f"{row['macs_pruned']:,} | {row['macs_reduction']:.2f}x | {row['compression']:.1%} | "
            f"{row['dense_p50_ms']:.3f} | {row['pruned_p50_ms']:.3f} | {_fmt(row['speedup'], '.2f')}x | "
            f"{_fmt(row['ratio'], '.2f')} |"
        )
    return "\n".join(lines) + "\n"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speedup_vs_macs", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="registered model families")
    parser.add_argument("--fraction", type=float, default=0.5, help="share of each group's channels removed at random")
    parser.add_argument("--round-to", type=int, nargs="+", default=[8, 16],
                        help="the roundings compared with none (integers >= 2)")  # fmt: skip
    parser.add_argument("--batch", type=int, default=256, help="batch size timed")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs per model first")
    parser.add_argument("--repeats", type=int, default=100, help="timed runs per model")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: its own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON file; the Markdown table goes beside it (.md)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        bad = [value for value in args.round_to if value < 2]
        if bad:
            raise ValueError(f"--round-to takes the roundings compared with none, each >= 2 (e.g. 8 16), got {bad}")
        config = LatencyConfig(batch_sizes=(args.batch,), warmup=args.warmup, repeats=args.repeats,
                               providers=(Provider.CPU,), intra_op_threads=args.threads, seed=args.seed)  # fmt: skip
        result = run(list(args.models), args.fraction, tuple(dict.fromkeys(args.round_to)), config, seed=args.seed)
    except (ValueError, TypeError) as error:
        print(f"speedup_vs_macs: error: {error}", file=sys.stderr)
        return 2
    result = {"command": " ".join(["python -m benchmarks.speedup_vs_macs", *(argv if argv is not None else sys.argv[1:])]),
              **result}  # fmt: skip
    write_json(args.out, result)
    table = markdown(result)
    args.out.with_suffix(".md").write_text(table)
    print(table)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

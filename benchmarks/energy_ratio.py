"""Energy per 1,000 inferences, pruned / dense, for the LeNet5 that exact BMRS_N compresses from the
prior (``lenet5_fmnist_bmrs_n_from_prior``: 92.6% of the parameters removed), beside its MACs and
latency ratios.

    python -m benchmarks.energy_ratio --out benchmarks/results/energy_ratio

The pruned architectures are the widths the three seeds of that flow ended with
(``benchmarks/paper/results/table1_conv1_on/raw/*-lenet5-bmrs_n-seed*.json``). Energy and latency
depend on the architecture, not on the weights' values, so each is built as a LeNet5 of those widths
with freshly initialised weights (no training needed) and exported to ONNX with the flow's exporter.
Energy: ONNX Runtime CPU, ``--batch`` examples per call, dense and pruned in alternating windows
(``benchmarks.energy_pair``, the flow's own measurement), under one codecarbon tracker; latency:
``benchmarks.latency``, interleaved. The report says how codecarbon measured (an estimate without
a RAPL counter) and compares the energy ratio with the MACs and latency ratios.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks.energy_pair import EnergyRunConfig, measure_paired_energy
from benchmarks.latency import LatencyConfig, measure_latency
from benchmarks.stage_energy import EnergyMeter
from bmrs.models import ModelConfig, build_network
from export.onnx_export import export_onnx
from export.slicing import count_flops, count_params

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "paper" / "results" / "table1_conv1_on" / "raw"
LENET5_LAYERS = ("features.0", "features.3", "classifier.1", "classifier.3")
INPUT_SHAPE = (1, 28, 28)


def pruned_widths(path: Path) -> tuple[int, ...]:
    widths = json.loads(path.read_text())["test"]["widths"]
    return tuple(int(widths[layer]) for layer in LENET5_LAYERS)


def export_lenet5(widths: tuple[int, ...] | None, path: Path) -> dict[str, Any]:
    model = build_network(ModelConfig(name="lenet5", widths=widths), INPUT_SHAPE, 10).eval()
    sample = torch.zeros(2, *INPUT_SHAPE)
    export_onnx(model, sample, path)
    return {"widths": widths, "params": count_params(model), "macs": count_flops(model, sample), "onnx_bytes": path.stat().st_size}


def measure(seed_file: Path, folder: Path, args: argparse.Namespace, meter: EnergyMeter) -> dict[str, Any]:
    dense = export_lenet5(None, folder / "dense.onnx")
    pruned = export_lenet5(pruned_widths(seed_file), folder / "pruned.onnx")
    models = {"dense": folder / "dense.onnx", "pruned": folder / "pruned.onnx"}
    energy_config = EnergyRunConfig(country_iso_code=args.country, batch_sizes=(args.batch,), rounds=args.rounds, window_s=args.window_s)
    energy = measure_paired_energy(models, INPUT_SHAPE, energy_config, meter)
    latency = measure_latency(models, INPUT_SHAPE, LatencyConfig(batch_sizes=(args.batch,), repeats=200, torch_devices=())).to_dict()
    row = energy["by_batch"][str(args.batch)] if energy.get("available", True) else None
    lat = latency["by_provider"]["CPUExecutionProvider"][str(args.batch)] if "CPUExecutionProvider" in latency["by_provider"] else None
    return {
        "source": str(seed_file.relative_to(REPO)),
        "dense": dense,
        "pruned": pruned,
        "params_removed": 1 - pruned["params"] / dense["params"],
        "macs_ratio": pruned["macs"] / dense["macs"],
        "energy_ratio": None if row is None else row["ratio_pruned_dense"],
        "energy_ratio_range": None if row is None else [row["ratio_min"], row["ratio_max"]],
        "energy_j_per_1k": None if row is None else {name: row[name]["j_per_1k"] for name in ("dense", "pruned")},
        "latency_ratio_p50": None if lat is None else lat["pruned"]["p50_ms"] / lat["dense"]["p50_ms"],
        "latency_p50_ms": None if lat is None else {name: lat[name]["p50_ms"] for name in ("dense", "pruned")},
        "energy_note": None if meter.mode() is None else meter.mode().note(),
        "energy_unavailable": None if row is not None else energy.get("reason"),
    }


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace, command: str, note: str | None) -> str:
    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}%"

    lines = [
        "# Energy per 1,000 inferences, pruned / dense: LeNet5 compressed by exact BMRS_N from the prior",
        "",
        f"`{command}`: ONNX Runtime CPU, batch {args.batch}, {args.rounds} rounds of alternating {args.window_s} s windows per seed, "
        "widths from benchmarks/paper/results/table1_conv1_on (freshly initialised weights: cost depends on the architecture only).",
        "",
        "| source run | widths (conv1, conv2, fc1, fc2) | params removed | MACs pruned/dense | p50 pruned/dense | energy pruned/dense (range over rounds) | J per 1k: dense, pruned |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        energy = "n/a" if row["energy_ratio"] is None else (
            f"{row['energy_ratio']:.3f} ({row['energy_ratio_range'][0]:.3f}-{row['energy_ratio_range'][1]:.3f})"
        )
        joules = "n/a" if row["energy_j_per_1k"] is None else f"{row['energy_j_per_1k']['dense']:.3g}, {row['energy_j_per_1k']['pruned']:.3g}"
        latency = "n/a" if row["latency_ratio_p50"] is None else f"{row['latency_ratio_p50']:.3f}"
        lines.append(
            f"| {Path(row['source']).name} | {row['pruned']['widths']} | {pct(row['params_removed'])} | {row['macs_ratio']:.3f} "
            f"| {latency} | {energy} | {joules} |"
        )
    ratios = [row["energy_ratio"] for row in rows if row["energy_ratio"] is not None]
    if ratios:
        lines += ["", f"Median energy ratio {statistics.median(ratios):.3f} against a median MACs ratio "
                      f"{statistics.median(row['macs_ratio'] for row in rows):.3f}."]  # fmt: skip
    if note:
        lines += ["", f"How measured: {note}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.energy_ratio", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "energy_ratio")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--window-s", type=float, default=3.0)
    parser.add_argument("--country", default="DNK")
    args = parser.parse_args(argv)
    sources = sorted(RESULTS.glob("fashion_mnist-lenet5-bmrs_n-seed*.json"))
    if not sources:
        print(f"benchmarks.energy_ratio: error: no BMRS_N LeNet5 results under {RESULTS}", file=sys.stderr)
        return 2
    meter = EnergyMeter(args.country)
    try:
        with tempfile.TemporaryDirectory(prefix="bmrs-energy-ratio-") as scratch:
            rows = []
            for index, source in enumerate(sources):
                folder = Path(scratch) / str(index)
                folder.mkdir()
                rows.append(measure(source, folder, args, meter))
                print(json.dumps({k: rows[-1][k] for k in ("source", "macs_ratio", "energy_ratio", "latency_ratio_p50")}))
    finally:
        meter.close()
    note = next((row["energy_note"] for row in rows if row["energy_note"]), None)
    command = "python -m benchmarks.energy_ratio " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "energy_ratio.json").write_text(json.dumps({"command": command, "rows": rows, "note": note}, indent=2) + "\n")
    (args.out / "energy_ratio.md").write_text(markdown(rows, args, command, note))
    print(markdown(rows, args, command, note))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Slicing and ONNX export of full-size torchvision models at 224x224: what it costs, and that it is exact.

    python -m benchmarks.large_models [--models resnet50 vit_b_16] [--fraction 0.4]

Each model is built untrained (no weights are downloaded), with noise where ``bmrs.models.structures``
puts it (ResNet-50: after every BatchNorm, the residual streams as coupled groups; ViT-B/16: every
MLP hidden layer), random posteriors and about ``fraction`` of every group's channels removed at
random (``bmrs.nn.groups.prune_at_random_``). Then it is sliced (timed), checked against the masked
model, and exported to ONNX (timed; ``export_onnx`` runs ``onnx.checker`` with full_check and
compares ONNX Runtime with PyTorch at batch sizes 1, 2 and 3). Results go to
``benchmarks/results/large_models.json``.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from bmrs.models import ModelConfig, NoiseInit, build_network
from bmrs.nn.groups import noise_groups, prune_at_random_
from export.onnx_export import OnnxConfig, export_onnx
from export.slicing import slice_model

RESULTS = Path(__file__).parent / "results" / "large_models.json"
SHAPE = (3, 224, 224)


def measure(name: str, fraction: float, seed: int = 0) -> dict[str, object]:
    started = time.perf_counter()
    model = build_network(ModelConfig(name), SHAPE, 1000, noise=NoiseInit(), seed=seed).eval()
    built = time.perf_counter() - started
    prune_at_random_(model, fraction, seed=seed)
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(seed))
    started = time.perf_counter()
    result = slice_model(model, x)
    sliced_seconds = time.perf_counter() - started
    with torch.no_grad():
        reference = model(x)
        gap = float((result.model.eval()(x) - reference).abs().max())
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        onnx = export_onnx(result.model, x[:1], Path(scratch) / "model.onnx", OnnxConfig(check_batch_sizes=(1, 2, 3)))
        export_seconds = time.perf_counter() - started
    groups = noise_groups(model)
    return {
        "input_shape": list(SHAPE),
        "noise_layers": sum(len(group.members) for group in groups),
        "groups": len(groups),
        "coupled_groups": sum(group.coupled for group in groups),
        "dense_params": result.dense_params,
        "pruned_params": result.pruned_params,
        "compression": round(result.compression, 4),
        "macs_ratio": round(result.pruned_flops / result.dense_flops, 4),
        "sliced_vs_masked_max_abs_diff": gap,
        "largest_output": float(reference.abs().max()),
        "onnx_max_abs_diff": onnx.max_abs_diff,
        "onnx_bytes": onnx.file_bytes,
        "build_seconds": round(built, 2),
        "slice_seconds": round(sliced_seconds, 2),
        "export_and_check_seconds": round(export_seconds, 2),
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "vit_b_16"])
    parser.add_argument("--fraction", type=float, default=0.4, help="share of each group's channels removed at random")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results = {name: measure(name, args.fraction) for name in args.models}
    for name, row in results.items():
        print(f"{name}: {row['compression']:.1%} removed, sliced vs masked {row['sliced_vs_masked_max_abs_diff']:.2e}, "
              f"ONNX {row['onnx_bytes'] / 1e6:.1f} MB, slice {row['slice_seconds']} s, export + check {row['export_and_check_seconds']} s")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": "python -m benchmarks.large_models " + " ".join(argv or []), "fraction": args.fraction,
                                    "models": results}, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()

"""The search behind the default flow's recipe: candidates trained on the default flow's data and
budget, each with the flow's own builders, training loop and slicing, test accuracy of the model
as it ships (the masked model, which the sliced model and its ONNX file reproduce exactly).

    python -m benchmarks.default_recipe_search --candidates dense C4 --seeds 0 1 2

Each row appends one JSON line to ``--out`` (default benchmarks/results/default_recipe_search.jsonl).
The candidates are written as ``--set`` overrides on top of ``BASE``, the default flow as it was
before this search (exact ELBO, BMRS_N, 5 + 1 epochs, fine-tuning with the noise sampled, noise on
every layer), so that every row keeps reproducing after the default changed to the recipe found.
Rows were run with ``OMP_NUM_THREADS=1``, two at a time on the 2-core machine.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE = ["train.kl_weighting=elbo", "train.finetune_noise=sampled", "train.criterion=bmrs_n", "train.finetune_epochs=1",
        "model.noise_on_first_layer=true", "train.progress=false"]  # fmt: skip
TEMPERED = ["train.kl_weighting=layer_mean", "train.finetune_noise=expected"]
SPARE_CONV1 = ["model.noise_points=[features.3, classifier.1, classifier.3]"]
CANDIDATES = {
    "dense": ["train.criterion=null"],
    "C1_u8_ft2": TEMPERED + ["train.criterion={name: bmrs_u, p1: 8}", "train.finetune_epochs=2"],
    "C4_u8_ft2_spare1": TEMPERED + ["train.criterion={name: bmrs_u, p1: 8}", "train.finetune_epochs=2", *SPARE_CONV1],
    "C5_u8_ft1_spare1": TEMPERED + ["train.criterion={name: bmrs_u, p1: 8}", "train.finetune_epochs=1", *SPARE_CONV1],
    "C6_u12_ft2_spare1": TEMPERED + ["train.finetune_epochs=2", "train.criterion={name: bmrs_u, p1: 12}", *SPARE_CONV1],
    "C7_u8_e6ft2_spare1": TEMPERED + ["train.finetune_epochs=2", "train.criterion={name: bmrs_u, p1: 8}", "train.epochs=6", *SPARE_CONV1],
    "C8_u10_ft2_spare1": TEMPERED + ["train.finetune_epochs=2", "train.criterion={name: bmrs_u, p1: 10}", *SPARE_CONV1],
}


def run(tag: str, seed: int) -> dict:
    from bmrs.train import train_
    from bmrs.train.metrics import classification_metrics
    from export.slicing import parameter_compression, slice_model
    from pipeline.config import load_flow
    from pipeline.stages import steps

    overrides = [*BASE, *CANDIDATES[tag], f"train.seed={seed}"]
    config = load_flow(REPO / "flows.yaml", "default", overrides)
    data = steps.load_data(config)
    started = time.perf_counter()
    noisy = config.train.criterion is not None
    model = steps.build(config, data, noisy=noisy)
    sample = steps.example_input(data)
    measure = (lambda m: parameter_compression(m, sample)) if noisy else (lambda m: 0.0)
    result = train_(model, data, config.train if noisy else replace(config.train, criterion=None), compression=measure)
    model.eval()
    row = {"tag": tag, "seed": seed, "acc": classification_metrics(model, data.test).accuracy, "overrides": overrides[len(BASE):]}
    if noisy:
        sliced = slice_model(model, sample)
        row.update(compression=sliced.compression, widths=sliced.widths)
        row["hist"] = [(h["epoch"], round(h["val_accuracy"], 4), round(h["compression"], 3)) for h in result.as_dict()]
    row["s"] = time.perf_counter() - started
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.default_recipe_search", description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES), metavar="TAG")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "default_recipe_search.jsonl")
    args = parser.parse_args(argv)
    for tag in args.candidates:
        for seed in args.seeds:
            row = run(tag, seed)
            print(json.dumps(row))
            with args.out.open("a") as out:
                out.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

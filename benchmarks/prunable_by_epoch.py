"""When does anything become prunable? Train a flow's noisy model with pruning held back and score
every epoch's posteriors by each exact criterion.

    python -m benchmarks.prunable_by_epoch --flow resnet20_fmnist_bmrs_n --epochs 3 \\
        [--set train.batch_size=32 ...] [--val-examples 2000] [--out FILE]

The flow's model, data, noise and training settings (``flows.yaml`` and ``--set``, through the
pipeline's own config loader) are trained for ``--epochs`` epochs by ``bmrs.train.train_`` with a
criterion that never prunes, so every epoch sees the same trajectory a flow whose pruning starts
later would. After each epoch (``train_``'s per-epoch ``compression`` hook) BMRS_N, BMRS_U-4 and
BMRS_U-8 decide on a copy of the model (``bmrs.train.pruning.prune_decisions``): the structures each
would keep, the parameter compression of slicing there, and that masked model's validation accuracy
on the first ``--val-examples`` images, before any fine-tuning; beside them the posteriors' median
``mu`` and ``log sigma``, and their spread across structures. Results: JSON and a Markdown table
(``.md`` beside it), by default under ``benchmarks/results/prunable_by_epoch/<flow>.json``.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bmrs.artifacts import write_json
from bmrs.criteria import BMRSLogNormal, BMRSLogUniform, Criterion
from bmrs.data import Split
from bmrs.nn.noise import noise_modules
from bmrs.train.loop import evaluate, train_
from bmrs.train.pruning import prune_decisions
from export.slicing import parameter_compression
from pipeline.config import ConfigError, load_flow
from pipeline.stages import steps

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "prunable_by_epoch"
CRITERIA: dict[str, Criterion] = {"bmrs_n": BMRSLogNormal(), "bmrs_u4": BMRSLogUniform(p1=4), "bmrs_u8": BMRSLogUniform(p1=8)}
# dF never reaches this, so training runs the flow's schedule without pruning anything.
NEVER = BMRSLogNormal(margin=1e30)


def posterior_summary(model: nn.Module) -> dict[str, float]:
    mus = torch.cat([noise.mu.detach().flatten() for noise in noise_modules(model).values()])
    log_sigmas = torch.cat([noise.log_sigma.detach().flatten() for noise in noise_modules(model).values()])
    return {
        "mu_median": float(mus.median()), "mu_min": float(mus.min()), "mu_max": float(mus.max()),
        "log_sigma_median": float(log_sigmas.median()), "log_sigma_min": float(log_sigmas.min()),
        "log_sigma_max": float(log_sigmas.max()),
    }  # fmt: skip


def score(model: nn.Module, sample: torch.Tensor, val: Split, min_alive: int) -> dict[str, Any]:
    """What each criterion would keep of ``model`` now, and what that costs before fine-tuning."""
    scores = {}
    for name, criterion in CRITERIA.items():
        masked = copy.deepcopy(model)
        decisions = prune_decisions(masked, criterion, {}, min_alive)
        noises = noise_modules(masked)
        for layer, prune in decisions.items():
            noises[layer].prune_(prune)
        accuracy, _ = evaluate(masked.eval(), val, 500)
        scores[name] = {
            "kept": sum(int((~prune).sum()) for prune in decisions.values()),
            "structures": sum(prune.numel() for prune in decisions.values()),
            "compression": parameter_compression(masked, sample),
            "val_accuracy": accuracy,
        }
    return scores


def run(flow: str, epochs: int, overrides: list[str], val_examples: int, flows: Path) -> dict[str, Any]:
    config = load_flow(flows, flow, overrides)
    data = steps.load_data(config)
    model = steps.build(config, data, noisy=True)
    if not noise_modules(model):
        raise ValueError(f"flow {flow!r} puts no noise in its model ({config.model.name}); nothing could be pruned")
    train_config = replace(config.train, epochs=epochs, finetune_epochs=0, prune_start=epochs, prune_start_by_layer={}, criterion=NEVER)
    sample = steps.example_input(data)
    val = Split(data.val.images[:val_examples], data.val.labels[:val_examples])
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()

    def after_epoch(trained: nn.Module) -> float:
        was_training = trained.training
        row = {"epoch": len(rows) + 1, "seconds": time.perf_counter() - started, **posterior_summary(trained)}
        row["criteria"] = score(trained, sample, val, config.train.min_structures_per_layer)
        trained.train(was_training)
        rows.append(row)
        print(_line(row), flush=True)
        return 0.0  # nothing is ever pruned during this training

    train_(model, data, train_config, compression=after_epoch)
    return {
        "flow": flow, "overrides": overrides, "epochs": epochs, "val_examples": len(val),
        "batch_size": config.train.batch_size, "lr": config.train.lr, "kl_weighting": config.train.kl_weighting.value,
        "steps_per_epoch": -(-len(data.train) // config.train.batch_size), "threads": torch.get_num_threads(), "rows": rows,
    }  # fmt: skip


def _line(row: dict[str, Any]) -> str:
    kept = " / ".join(f"{c['kept']}" for c in row["criteria"].values())
    return (f"epoch {row['epoch']}: log sigma median {row['log_sigma_median']:.2f} ({row['log_sigma_min']:.2f} to "
            f"{row['log_sigma_max']:.2f}), mu median {row['mu_median']:.2f}; kept by {' / '.join(CRITERIA)}: {kept}")  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    sets = " ".join(f"--set {item}" for item in result["overrides"])
    lines = [
        f"# Prunable by epoch: {result['flow']}", "",
        f"`python -m benchmarks.prunable_by_epoch --flow {result['flow']} --epochs {result['epochs']} {sets}`".replace("  ", " "), "",
        f"batch {result['batch_size']} ({result['steps_per_epoch']} steps per epoch), lr {result['lr']}, KL {result['kl_weighting']}, "
        f"{result['threads']} threads; masked accuracy on {result['val_examples']} validation images, before fine-tuning.", "",
        "| epoch | log sigma median (min to max) | mu median | " + " | ".join(f"{name}: kept, compression, accuracy" for name in CRITERIA) + " |",
        "|---|---|---|" + "---|" * len(CRITERIA),
    ]  # fmt: skip
    for row in result["rows"]:
        cells = [f"{c['kept']}/{c['structures']}, {100 * c['compression']:.1f}%, {100 * c['val_accuracy']:.1f}%" for c in row["criteria"].values()]
        lines.append(f"| {row['epoch']} | {row['log_sigma_median']:.2f} ({row['log_sigma_min']:.2f} to {row['log_sigma_max']:.2f}) | "
                     f"{row['mu_median']:.2f} | " + " | ".join(cells) + " |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flow", required=True)
    parser.add_argument("--flows", type=Path, default=REPO / "flows.yaml")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--val-examples", type=int, default=2000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.val_examples < 1:
        print("prunable_by_epoch: error: --epochs and --val-examples must be >= 1", file=sys.stderr)
        return 2
    try:
        result = run(args.flow, args.epochs, args.overrides, args.val_examples, args.flows)
    except (ConfigError, ValueError, TypeError) as error:
        print(f"prunable_by_epoch: error: {error}", file=sys.stderr)
        return 2
    out = args.out or RESULTS / f"{args.flow}.json"
    write_json(out, result)
    out.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

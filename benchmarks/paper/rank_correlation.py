"""Paper figure 3: how alike the pruning criteria rank the structures of one trained model.

    python -m benchmarks.paper.rank_correlation [--model lenet5|mlp] [--seeds 0 1 2] [--epochs 50]
        [--set SECTION.KEY=VALUE ...] [--flows flows.yaml] [--jobs N]
        [--out benchmarks/paper/results/rank_correlation]

Per seed a model with noise layers is trained without pruning (the model's paper flow with
``train.criterion`` null and no fine-tuning, but built with its noise, unlike the dense "None"
model; ``--set`` overrides as ``bmrs run --set`` takes them); every registered criterion then scores every structure (``Decision.scores``,
higher keeps), BMRS_U twice (p1 = 8 and 4), and the Spearman correlation of every pair of
criteria is taken over all of the model's structures pooled, and within each layer. The figure is
the pooled matrix averaged over seeds.

Written under ``--out``: ``<dataset>-<model>.json`` (settings, command, per-seed and mean matrices,
per-layer matrices), ``.png`` (heatmap) and ``.md`` (table); ``models/`` holds the trained weights
and ``raw/`` each seed's scores, so a rerun retrains nothing and a newly registered criterion only
costs scoring.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pickle
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks.paper import runner
from benchmarks.paper.experiment import (
    build,
    load_data,
    run_cached,
    run_record,
    same_run,
    train_and_measure,
)
from benchmarks.plots import heatmap
from bmrs.artifacts import write_json
from bmrs.criteria import CRITERIA, LayerView, build_criterion, ranking_criteria
from bmrs.data import DataBundle
from bmrs.nn.noise import noise_modules
from bmrs.train.metrics import mean_std
from bmrs.train.post_training import gradient_statistics
from pipeline.config import FlowConfig
from pipeline.seeds import check_seeds

# Settings this benchmark sets itself: overriding them with --set would be ambiguous.
UNPRUNED = "the models are trained without pruning"
FIXED = {"train.criterion": UNPRUNED, "train.finetune_epochs": "nothing is pruned, so nothing is fine-tuned",
         "train.epochs": "use --epochs", "train.seed": "use --seeds"}  # fmt: skip
# Criteria scored more than once; every other registered criterion is scored with its defaults.
VARIANTS: dict[str, tuple[dict[str, Any], ...]] = {"bmrs_u": ({"p1": 8.0}, {"p1": 4.0})}


@dataclass(frozen=True)
class ScoredCriterion:
    label: str  # "bmrs_u-8"
    name: str  # registry name
    settings: dict[str, Any]  # every setting, defaults included


def scored_criteria() -> list[ScoredCriterion]:
    """Every registered criterion with its own ranking (its ``VARIANTS`` if it has some), in registry order."""
    entries = []
    for name in ranking_criteria():
        for variant in VARIANTS.get(name, ({},)):
            suffix = "-".join(f"{value:g}" if isinstance(value, float) else str(value) for value in variant.values())
            built = build_criterion(name, **variant)  # its defaults, those from factories included
            settings = {spec.name: getattr(built, spec.name) for spec in dataclasses.fields(built)}
            entries.append(ScoredCriterion(f"{name}-{suffix}" if suffix else name, name, settings))
    return entries


def average_ranks(values: Tensor) -> Tensor:
    """1-based ranks of a 1-D tensor, ties sharing the mean of the ranks they span (float64)."""
    if values.dim() != 1:
        raise ValueError(f"average_ranks takes a 1-D tensor, got shape {tuple(values.shape)}")
    if bool(torch.isnan(values).any()):
        raise ValueError("cannot rank NaN values; check the scores for NaN")
    if values.numel() == 0:
        return torch.empty(0, dtype=torch.float64)
    order = torch.argsort(values, stable=True)
    ordered = values[order]
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[1:] = ordered[1:] != ordered[:-1]
    group = torch.cumsum(starts.long(), 0) - 1
    positions = torch.arange(1, values.numel() + 1, dtype=torch.float64)
    sums = torch.zeros(int(group[-1]) + 1, dtype=torch.float64).index_add_(0, group, positions)
    counts = torch.bincount(group).double()
    ranks = torch.empty(values.numel(), dtype=torch.float64)
    ranks[order] = (sums / counts)[group]
    return ranks


def spearman_matrix(scores: Tensor) -> Tensor:
    """Spearman correlation between every pair of rows of ``scores`` (criteria x structures): the
    Pearson correlation of their average ranks. A row whose ranks are all tied has no correlation (NaN)."""
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(f"spearman_matrix needs (criteria, structures) scores with >= 2 structures, got {tuple(scores.shape)}")
    ranks = torch.stack([average_ranks(row) for row in scores.double()])
    centred = ranks - ranks.mean(dim=1, keepdim=True)
    norms = centred.norm(dim=1)
    unit = centred / torch.where(norms > 0, norms, torch.nan).unsqueeze(1)
    return (unit @ unit.T).clamp(-1.0, 1.0)


def spearman(x: Tensor, y: Tensor) -> float:
    if x.shape != y.shape or x.dim() != 1:
        raise ValueError(f"spearman needs two 1-D tensors of one length, got {tuple(x.shape)} and {tuple(y.shape)}")
    return float(spearman_matrix(torch.stack([x.double(), y.double()]))[0, 1])


def score_structures(
    model: nn.Module, data: DataBundle, criteria: Sequence[ScoredCriterion], *, batch_size: int, seed: int
) -> dict[str, dict[str, list[float]]]:
    """``{criterion label: {noise layer: importance of each structure}}``. Gradient statistics are
    one pass over the training data, as post-training pruning collects them."""
    noises = noise_modules(model)
    if not noises:
        raise ValueError("rank correlations compare scores of noise-layer structures; the model has no noise layers")
    grad_sq: dict[str, Tensor] = {}
    if any(CRITERIA[entry.name].needs_gradients for entry in criteria):
        grad_sq = gradient_statistics(model, data, batch_size=batch_size, seed=seed)
    scores: dict[str, dict[str, list[float]]] = {}
    for entry in criteria:
        criterion = build_criterion(entry.name, **entry.settings)
        scores[entry.label] = {}
        for name, noise in noises.items():
            view = LayerView(name, noise, model.get_submodule(noise.source), grad_sq.get(name))
            layer = criterion.decide(view).scores.detach().double()
            if not bool(torch.isfinite(layer).all()):
                raise ValueError(
                    f"criterion {entry.label!r} gave {name!r} a non-finite score; an unpruned model should have none, "
                    "so check the trained weights and noise"
                )
            scores[entry.label][name] = layer.tolist()
    return scores


def _trained(config: FlowConfig, weights_path: Path) -> tuple[nn.Module, DataBundle, dict[str, Any]]:
    """The noisy model ``config`` trains and its training record: from ``weights_path`` when that
    holds exactly this training, otherwise trained now and stored there."""
    data = load_data(config.data)
    wanted = run_record(config, noisy=True)
    if weights_path.is_file():
        try:
            stored = torch.load(weights_path, weights_only=True)
            spec = json.loads(stored["spec"]) if isinstance(stored, dict) else None  # kept as a JSON string
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, KeyError, TypeError, json.JSONDecodeError):
            spec = None  # a damaged file is retrained; it is written atomically, so only edits cause this
        if same_run(spec, wanted):
            model = build(config, data, noisy=True)
            model.load_state_dict(stored["state_dict"])
            model.eval()
            return model, data, json.loads(stored["record"])
    model, record = train_and_measure(config, noisy=True)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    partial = weights_path.with_name(f".{weights_path.name}.partial")
    torch.save({"spec": json.dumps(wanted, sort_keys=True), "record": json.dumps(record, allow_nan=False),
                "state_dict": model.state_dict()}, partial)  # fmt: skip
    os.replace(partial, weights_path)
    return model, data, record


def seed_scores(config: FlowConfig, raw_path: str, weights_path: str) -> dict[str, Any]:
    """One seed's scores (cached at ``raw_path``); rescored from the stored weights when the
    registered criteria changed since."""
    wanted = json.loads(json.dumps([asdict(entry) for entry in scored_criteria()], allow_nan=False))
    record = run_record(config, noisy=True)

    def compute() -> dict[str, Any]:
        model, data, training_record = _trained(config, Path(weights_path))
        entries = [ScoredCriterion(**entry) for entry in wanted]
        scores = score_structures(model, data, entries, batch_size=config.train.batch_size, seed=config.train.seed)
        training = {key: value for key, value in training_record.items() if key != "spec"}
        return {"spec": record, "training": training, "criteria": wanted, "scores": scores}

    result = run_cached(raw_path, record, compute)
    if not _same_criteria(result.get("criteria"), wanted):
        result = compute()
        write_json(raw_path, result)
    return result


def _same_criteria(stored: Any, wanted: list[dict[str, Any]]) -> bool:
    """Whether a seed was scored by exactly the criteria ``wanted`` lists, in any order: the order
    is the registry's at scoring time, and registering criteria in another order changes no score."""
    if not isinstance(stored, list) or not all(isinstance(entry, dict) and "label" in entry for entry in stored):
        return False
    return sorted(stored, key=lambda entry: entry["label"]) == sorted(wanted, key=lambda entry: entry["label"])


def correlations(result: dict[str, Any], labels: Sequence[str]) -> dict[str, Any]:
    """Pooled and per-layer Spearman matrices of one seed's scores (None where undefined), rows and
    columns in the order of ``labels``: seeds scored at different times may list them in another."""
    layers = list(result["scores"][labels[0]])
    per_layer = {layer: torch.tensor([result["scores"][label][layer] for label in labels], dtype=torch.float64) for layer in layers}
    pooled = torch.cat(list(per_layer.values()), dim=1)
    return {
        "pooled": _as_json(spearman_matrix(pooled)),
        "layers": {layer: _as_json(spearman_matrix(scores)) for layer, scores in per_layer.items() if scores.shape[1] >= 2},
    }


def _as_json(matrix: Tensor) -> list[list[float | None]]:
    return [[float(v) if math.isfinite(v) else None for v in row] for row in matrix.tolist()]


def _mean_matrix(matrices: list[list[list[float | None]]]) -> tuple[list[list[float | None]], list[list[float | None]]]:
    """Element-wise mean and standard deviation over seeds, of the seeds where the entry is defined."""
    size = len(matrices[0])
    mean = [[None] * size for _ in range(size)]
    std = [[None] * size for _ in range(size)]
    for i in range(size):
        for j in range(size):
            values = [m[i][j] for m in matrices if m[i][j] is not None]
            if values:
                mean[i][j], std[i][j] = mean_std(values)
    return mean, std


def markdown_table(labels: Sequence[str], matrix: Sequence[Sequence[float | None]]) -> str:
    rows = ["| | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for label, row in zip(labels, matrix):
        rows.append(f"| {label} | " + " | ".join("n/a" if v is None else f"{v:.2f}" for v in row) + " |")
    return "\n".join(rows) + "\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.paper.rank_correlation", description=__doc__.splitlines()[0])
    runner.add_run_arguments(parser, default_out=str(Path(__file__).parent / "results" / "rank_correlation"), default_seeds=[0, 1, 2])
    return parser


def run_configs(args: argparse.Namespace) -> dict[int, FlowConfig]:
    """Per seed, the training the command line asks for (its model is built with noise: ``noisy=True``)."""
    seeds = check_seeds(args.seeds)
    runner.check_jobs(args.jobs)
    sets = [*runner.user_overrides(args.overrides, FIXED), f"train.epochs={args.epochs}", "train.finetune_epochs=0",
            *runner.criterion_overrides(None)]  # fmt: skip
    return {seed: runner.paper_config(args.flows, args.model, args.dataset, [*sets, f"train.seed={seed}"]) for seed in seeds}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configs = runner.checked_configs("rank_correlation", run_configs, args)
    seeds = list(configs)
    out = Path(args.out)
    stem = f"{args.dataset}-{args.model}"
    tasks = [
        runner.Task(f"seed {seed}", seed_scores, (config, str(out / "raw" / f"{stem}-seed{seed}.json"), str(out / "models" / f"{stem}-seed{seed}.pt")))
        for seed, config in configs.items()
    ]
    results, failures = runner.run_all(tasks, args.jobs)
    finished = [(seed, results[f"seed {seed}"]) for seed in seeds if f"seed {seed}" in results]
    if finished:
        write_report(out, stem, finished, runner.command_line("benchmarks.paper.rank_correlation", argv))
    return runner.report_failures(failures)


def write_report(out: Path, stem: str, finished: list[tuple[int, dict[str, Any]]], command: str) -> dict[str, Any]:
    labels = [entry["label"] for entry in finished[0][1]["criteria"]]
    per_seed = [{"seed": seed, "test": result["training"]["test"], **correlations(result, labels)} for seed, result in finished]
    mean, std = _mean_matrix([entry["pooled"] for entry in per_seed])
    layers = list(per_seed[0]["layers"])
    first_spec = finished[0][1]["spec"]
    report = {
        "benchmark": "rank_correlation",
        "command": command,
        "settings": {
            "model": first_spec["model"],
            "dataset": first_spec["dataset"],
            "seeds": [seed for seed, _ in finished],
            "specs": [result["spec"] for _, result in finished],
            "structures": {layer: len(scores) for layer, scores in finished[0][1]["scores"][labels[0]].items()},
        },
        "criteria": finished[0][1]["criteria"],
        "labels": labels,
        "mean": mean,
        "std": std,
        "per_layer_mean": {layer: _mean_matrix([entry["layers"][layer] for entry in per_seed])[0] for layer in layers},
        "per_seed": per_seed,
    }
    write_json(out / f"{stem}.json", report)
    title = f"Spearman rank correlation, {first_spec['model']} on {first_spec['dataset']} ({len(finished)} seeds)"
    heatmap(out / f"{stem}.png", [[math.nan if v is None else v for v in row] for row in mean], labels, title=title)
    (out / f"{stem}.md").write_text(
        f"# {title}\n\nMean over seeds {report['settings']['seeds']} of the Spearman correlation between the "
        f"criteria's scores of all {sum(report['settings']['structures'].values())} structures.\n\n"
        + markdown_table(labels, mean)
        + f"\nCommand: `{command}`\n"
    )
    print(markdown_table(labels, mean))
    return report


if __name__ == "__main__":
    sys.exit(main())

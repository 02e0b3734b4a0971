"""A tiny flow and a stand-in for the flow's run path, for the ``bmrs compare`` tests.

``FakeExecute`` does what a finished run leaves that ``bmrs compare`` reads (status.json, report.json
and, for a noisy method, a real ``train/checkpoint.pt`` whose masks remove ``PRUNED`` structures
per noise layer), and records every call. The dense baseline is trained for real: 1 epoch on 64
examples of an 8-wide MLP.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bmrs.artifacts import write_json
from pipeline_data import write_blobs as write_pipeline_blobs
from bmrs.nn.noise import noise_modules
from bmrs.train.checkpoint import save_checkpoint
from pipeline.compare import plan
from pipeline.compare.command import add_compare_parser, compare
from pipeline.stages import steps

FLOW = "tiny"
PRUNED = 3  # structures of each noise layer the fake bmrs_n run removes


def write_blobs(path: Path, *, train: int = 80, test: int = 40) -> Path:
    """The pipeline tests' Gaussian blobs as 8x8 images, fewer of them: a comparison runs many flows."""
    return write_pipeline_blobs(path, train=train, test=test)


def write_flows(folder: Path) -> Path:
    """flows.yaml with one tiny flow, its data and runs inside ``folder``."""
    write_blobs(folder / "blobs.npz")
    flow = {
        "data": {"dataset": "npz", "root": str(folder / "blobs.npz")},
        "model": {"name": "mlp", "hidden_width": 8, "hidden_layers": 2},
        "train": {"epochs": 1, "finetune_epochs": 0, "lr": 0.01, "batch_size": 16, "criterion": "bmrs_n", "progress": False},
        "latency": {"batch_sizes": [1], "repeats": 2, "warmup": 1, "torch_devices": []},
        "energy": {"enabled": False},
        "output": {"runs_dir": str(folder / "runs")},
    }
    path = folder / "flows.yaml"
    path.write_text(json.dumps({"flows": {FLOW: flow}}))  # JSON is YAML
    return path


@dataclass
class FakeExecute:
    """Stands in for ``pipeline.cli._execute``."""

    fail: set[str] = field(default_factory=set)  # methods whose runs fail
    degrade: set[str] = field(default_factory=set)  # methods whose runs end degraded
    calls: list[tuple[str, int, bool]] = field(default_factory=list)  # (method, seed, resume)
    dense_present: list[bool] = field(default_factory=list)  # whether the shared baseline was in place
    pruners: frozenset[str] = frozenset({"bmrs_n"})  # methods whose runs remove PRUNED structures per layer

    def __call__(self, config, run_dir: Path, *, resume: bool) -> int:
        self.calls.append((config.method, config.train.seed, resume))
        self.dense_present.append((run_dir / "baseline" / "checkpoint.pt").is_file())
        if config.method in self.fail:
            steps.set_status(run_dir, "failed", f"{config.method} diverged")
            return 2
        if config.train.criterion is not None:
            data = steps.load_data(config)
            model = steps.build(config, data, noisy=True)
            for noise in noise_modules(model).values():
                gone = torch.zeros(noise.num_structures, dtype=torch.bool)
                gone[:PRUNED] = config.method in self.pruners
                noise.prune_(gone)
            save_checkpoint(run_dir / "train" / "checkpoint.pt", model, {"finished": True})
        passed = config.method not in self.degrade
        checks = {"passed": passed, "warning": None if passed else f"{config.method} collapsed"}
        write_json(run_dir / "report.json", {"method": config.method, "checks": checks})
        steps.set_status(run_dir, "completed" if passed else "degraded", checks["warning"])
        return 0 if passed else 3


@dataclass
class CountingDense:
    """The real dense training (``plan.train_dense``), counted per seed."""

    seeds: list[int] = field(default_factory=list)

    def __call__(self, config, data, directory: Path) -> Path:
        self.seeds.append(config.train.seed)
        return plan.train_dense(config, data, directory)


@dataclass
class Reports:
    """A stand-in for ``pipeline.reporting.write_comparison`` that records its arguments."""

    calls: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, run_dirs, out_dir, *, title=None) -> Path:
        self.calls.append({"run_dirs": [Path(d) for d in run_dirs], "out_dir": Path(out_dir), "title": title})
        return Path(out_dir) / "report.md"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bmrs")
    add_compare_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["compare", *argv])


def run_compare(flows: Path, argv: list[str], execute: FakeExecute, dense: CountingDense | None = None) -> int:
    return compare(parse([str(flows), "--flow", FLOW, *argv]), execute, train_dense=dense)

"""Training-step time with noise layers vs the same model without them, measured side by side.

    python -m benchmarks.paper.train_overhead [--blocks 40] [--block-steps 10] [--set SECTION.KEY=VALUE ...]
        [--flows flows.yaml] [--out benchmarks/paper/results/train_overhead.json]

For each (model, batch size) a plain and a noisy model are built once, as the model's Fashion-MNIST
paper flow builds them (``--set data.root=DIR`` for other dataset files), and trained in alternating
blocks of ``--block-steps`` optimizer steps on the same real Fashion-MNIST batches (the noisy loss is
BMRS's NLL + layer-mean KL). Alternating short blocks matters on a shared VM, whose speed drifts by
tens of percent within seconds; the ratio is median(noisy block) / median(plain block), per step.
Results go to ``benchmarks/paper/results/train_overhead.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.paper import runner
from benchmarks.paper.experiment import build, load_data
from bmrs.nn.noise import noise_modules
from bmrs.train import KLWeighting, kl_penalty, make_optimizer
from pipeline.config import FlowConfig

DATASET = "fashion_mnist"
CASES = (("lenet5", 32), ("lenet5", 64), ("mlp", 128))  # paper batch sizes: LeNet5 32, MLP 128
WARMUP_STEPS = 20  # allocator, thread pools and (noisy) kernel compilation settle
FIXED = {"train": "the timed training step is fixed here (Adam, lr 1e-3, layer-mean KL, the batch sizes of CASES)",
         "model.name": "the models timed are those of CASES", "data.dataset": f"the steps are timed on {DATASET}"}  # fmt: skip


class _Trainer:
    def __init__(self, config: FlowConfig, data, noisy: bool) -> None:
        self.model = build(config, data, noisy=noisy)
        self.noises = list(noise_modules(self.model).values())
        self.optimizer = make_optimizer(self.model, 1e-3)
        self.num_train = len(data.train)
        self.model.train()

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        loss = F.cross_entropy(self.model(images), labels)
        if self.noises:
            loss = loss + kl_penalty(self.noises, KLWeighting.LAYER_MEAN, 1.0, self.num_train)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def _timed_block(trainer: _Trainer, batches: list) -> float:
    started = time.perf_counter()
    for images, labels in batches:
        trainer.step(images, labels)
    return (time.perf_counter() - started) / len(batches)


def measure(configs: dict[str, FlowConfig], blocks: int, block_steps: int) -> dict:
    """``configs``: each model's flow config (data, model and noise are taken from it)."""
    results = []
    for name, batch_size in CASES:
        config = configs[name]
        data = load_data(config.data)
        plain, noisy = _Trainer(config, data, noisy=False), _Trainer(config, data, noisy=True)
        stream = data.train.batches(batch_size, generator=torch.Generator().manual_seed(0))
        batches = [next(stream) for _ in range(block_steps)]
        for _ in range(WARMUP_STEPS):
            plain.step(*batches[0])
            noisy.step(*batches[0])
        times: dict[str, list[float]] = {"plain": [], "noisy": []}
        for block in range(blocks):
            order = (plain, noisy) if block % 2 == 0 else (noisy, plain)  # neither always goes first
            for trainer in order:
                times["plain" if trainer is plain else "noisy"].append(_timed_block(trainer, batches))
        plain_s, noisy_s = statistics.median(times["plain"]), statistics.median(times["noisy"])
        row = {"model": name, "batch_size": batch_size, "plain_ms": plain_s * 1e3, "noisy_ms": noisy_s * 1e3, "ratio": noisy_s / plain_s}
        print(f"{name:7s} batch {batch_size:4d}: plain {row['plain_ms']:.3f} ms/step, noisy {row['noisy_ms']:.3f} ms/step, ratio {row['ratio']:.2f}")
        results.append(row)
    return {
        "blocks": blocks,
        "block_steps": block_steps,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "results": results,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.paper.train_overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=40)
    parser.add_argument("--block-steps", type=int, default=10)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_overhead.json"))
    runner.add_config_arguments(parser)
    args = parser.parse_args(argv)
    try:
        overrides = runner.user_overrides(args.overrides, FIXED)
        configs = {name: runner.paper_config(args.flows, name, DATASET, overrides) for name in dict(CASES)}
        for config in configs.values():
            load_data(config.data)  # a missing dataset fails here, before any model is timed
    except (ValueError, TypeError) as error:  # ConfigError among them: a bad --set, as bmrs run reports it
        runner.bad_input("train_overhead", error)
    report = measure(configs, args.blocks, args.block_steps)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])

"""Training-step time with noise layers vs the same model without them, measured side by side.

    python -m benchmarks.train_overhead [--data-root DIR] [--rounds 5] [--steps 200]

For each (model, batch size) the plain and the noisy model train in alternating rounds of
``--steps`` optimizer steps on real Fashion-MNIST batches (BMRS_N loss: NLL + layer-mean KL), so
machine load drifts hit both alike; the reported ratio is median(noisy) / median(plain) per step.
Results go to ``benchmarks/results/train_overhead.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bmrs.data import DEFAULT_ROOTS, load_dataset
from bmrs.models import build_model, insert_noise, noise_points_for
from bmrs.noise import noise_modules
from bmrs.noise_bank import attach_noise_bank
from bmrs.train import KLWeighting, kl_penalty

CASES = (("lenet5", 32), ("lenet5", 64), ("mlp", 128))  # paper batch sizes: LeNet5 32, MLP 128


def _step_time(model, data, batch_size: int, steps: int, seed: int) -> float:
    noises = list(noise_modules(model).values())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = data.train.batches(batch_size, generator=torch.Generator().manual_seed(seed))
    model.train()
    started = None
    for index, (images, labels) in enumerate(batches):
        if index == 10:  # warm-up steps: allocator and thread pools settle
            started = time.perf_counter()
        loss = F.cross_entropy(model(images), labels)
        if noises:
            loss = loss + kl_penalty(noises, KLWeighting.LAYER_MEAN, 1.0, len(data.train))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if index == 10 + steps - 1:
            break
    return (time.perf_counter() - started) / steps


def measure(data_root: str, rounds: int, steps: int) -> dict:
    data = load_dataset("fashion_mnist", data_root)
    results = []
    for name, batch_size in CASES:
        times: dict[str, list[float]] = {"plain": [], "noisy": []}
        for round_index in range(rounds):
            for kind in ("plain", "noisy"):
                torch.manual_seed(round_index)
                model = build_model(name, data.input_shape, data.num_classes)
                if kind == "noisy":
                    insert_noise(model, noise_points_for(name, model))
                    attach_noise_bank(model)
                times[kind].append(_step_time(model, data, batch_size, steps, round_index))
        plain, noisy = statistics.median(times["plain"]), statistics.median(times["noisy"])
        row = {"model": name, "batch_size": batch_size, "plain_ms": plain * 1e3, "noisy_ms": noisy * 1e3, "ratio": noisy / plain}
        print(f"{name:7s} batch {batch_size:4d}: plain {row['plain_ms']:.3f} ms/step, noisy {row['noisy_ms']:.3f} ms/step, ratio {row['ratio']:.2f}")
        results.append(row)
    return {
        "rounds": rounds,
        "steps_per_round": steps,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": torch.get_num_threads()},
        "results": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=DEFAULT_ROOTS["fashion_mnist"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_overhead.json"))
    args = parser.parse_args()
    report = measure(args.data_root, args.rounds, args.steps)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""How fast a run trains in a Dask worker, against this process: the local cluster ``bmrs compare
--workers N`` starts, and one at Dask's defaults.

    python -m benchmarks.dask_worker_speed [--model resnet20] [--batch 32] [--steps 100] [--rounds 3] [--out PATH]

Each place times the same ``--steps`` optimiser steps (Adam, cross-entropy, after 10 untimed ones)
of the flow's noisy model of ``--model`` (built for Fashion-MNIST's 1x28x28, 10 classes, noise where
its family puts it) on one fixed random batch, with one torch thread: in this process, in the worker
of a one-worker cluster started by ``pipeline.sweep`` exactly as a sweep starts it, and in the worker
of a one-worker ``LocalCluster`` at Dask's defaults (the same environment but for what Dask's nanny
adds). The places take turns for ``--rounds`` rounds, each cluster started afresh per round, so
drift lands on each alike; per place the median over rounds of wall-clock and CPU milliseconds per
step (CPU: the process's, all its threads) and the ratio to this process's.

Why: Dask's nanny exports ``MALLOC_TRIM_THRESHOLD_=65536`` into every worker by default. Set at all,
that variable fixes glibc's mmap threshold at 128 KiB, so each large tensor is mapped and unmapped
afresh and torch's steps spend their time in page faults. ``pipeline.sweep`` leaves it out of its
workers; this measures what that is worth. Results: ``benchmarks/results/dask_worker_speed.json``
and a Markdown table beside it (``.md``).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from benchmarks.latency import describe_machine
from bmrs.artifacts import write_json

RESULTS = Path(__file__).parent / "results" / "dask_worker_speed.json"
INPUT_SHAPE = (1, 28, 28)
NUM_CLASSES = 10
WARMUP_STEPS = 10
NO_API = "http://127.0.0.1:9/api"  # the timed function reports nothing to Prefect
HERE, SWEEP_WORKER, DASK_DEFAULT_WORKER = "this process", "bmrs sweep worker", "Dask default worker"


def time_training_steps(model_name: str, batch: int, steps: int) -> dict[str, float | str | None]:
    """Wall-clock and process CPU milliseconds per optimiser step of ``model_name``'s noisy model,
    one torch thread; run where it is called (this process or a Dask worker)."""
    import torch

    from bmrs.models import ModelConfig, NoiseInit, build_network

    torch.set_num_threads(1)
    model = build_network(ModelConfig(model_name), INPUT_SHAPE, NUM_CLASSES, noise=NoiseInit(), seed=0).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, *INPUT_SHAPE, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (batch,), generator=generator)

    def step() -> None:
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimiser.step()

    for _ in range(WARMUP_STEPS):
        step()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    return {"wall_ms": 1e3 * (time.perf_counter() - wall) / steps, "cpu_ms": 1e3 * (time.process_time() - cpu) / steps,
            "malloc_trim": os.environ.get("MALLOC_TRIM_THRESHOLD_")}  # fmt: skip


def _in_worker(cluster_address: str, model_name: str, batch: int, steps: int) -> dict[str, float | str | None]:
    from distributed import Client

    with Client(cluster_address, set_as_default=False) as client:
        return client.submit(time_training_steps, model_name, batch, steps, pure=False).result()


def _in_sweep_worker(model_name: str, batch: int, steps: int) -> dict[str, float | str | None]:
    from pipeline.sweep import local_cluster, plan_local

    with local_cluster(plan_local(1, runs=1, cores=1), NO_API) as cluster:
        return _in_worker(cluster.address, model_name, batch, steps)


def _in_dask_default_worker(model_name: str, batch: int, steps: int) -> dict[str, float | str | None]:
    from distributed import LocalCluster

    from pipeline.sweep import worker_environment

    env = worker_environment(1, NO_API)  # as the sweep's workers: only the nanny's own additions differ
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
                      memory_limit=0, env=env) as cluster:  # fmt: skip
        return _in_worker(cluster.scheduler_address, model_name, batch, steps)


def run(model_name: str, batch: int, steps: int, rounds: int) -> dict:
    places = {HERE: time_training_steps, SWEEP_WORKER: _in_sweep_worker, DASK_DEFAULT_WORKER: _in_dask_default_worker}
    trimmed_before = os.environ.get("MALLOC_TRIM_THRESHOLD_")
    samples: dict[str, list[dict]] = {place: [] for place in places}
    for round_index in range(rounds):
        for place, measure in places.items():
            samples[place].append(measure(model_name, batch, steps))
            print(f"round {round_index + 1}/{rounds}, {place}: {samples[place][-1]['wall_ms']:.1f} ms per step", flush=True)
        # Dask's nanny also writes its variables into this process's environment, from where the
        # next round's sweep worker would inherit them: put it back as it was.
        if trimmed_before is None:
            os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
        else:
            os.environ["MALLOC_TRIM_THRESHOLD_"] = trimmed_before
    rows = []
    for place, runs in samples.items():
        wall = statistics.median(sample["wall_ms"] for sample in runs)
        cpu = statistics.median(sample["cpu_ms"] for sample in runs)
        rows.append({"place": place, "wall_ms_per_step": wall, "cpu_ms_per_step": cpu, "malloc_trim": runs[0]["malloc_trim"],
                     "wall_ms_rounds": [sample["wall_ms"] for sample in runs]})  # fmt: skip
    reference = rows[0]
    for row in rows:
        row["wall_vs_this_process"] = row["wall_ms_per_step"] / reference["wall_ms_per_step"]
        row["cpu_vs_this_process"] = row["cpu_ms_per_step"] / reference["cpu_ms_per_step"]
    return {"model": model_name, "batch_size": batch, "steps": steps, "rounds": rounds, "threads": 1,
            "machine": describe_machine(), "rows": rows}  # fmt: skip


def _machine_line(machine: dict) -> str:
    return (f"{machine.get('processor') or machine.get('machine')}, {machine.get('usable_cpu_count')} usable cores, "
            f"{machine.get('platform')}, Python {machine.get('python_version')}")  # fmt: skip


def markdown(result: dict) -> str:
    lines = [
        f"# Training speed in a Dask worker: {result['model']}, batch {result['batch_size']}, 1 torch thread",
        "",
        f"`python -m benchmarks.dask_worker_speed --model {result['model']} --batch {result['batch_size']} "
        f"--steps {result['steps']} --rounds {result['rounds']}`; {_machine_line(result['machine'])}.",
        "",
        "| where | MALLOC_TRIM_THRESHOLD_ | ms per step (wall) | ms per step (CPU) | wall vs this process | CPU vs this process |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(f"| {row['place']} | {row['malloc_trim'] or 'unset'} | {row['wall_ms_per_step']:.1f} | {row['cpu_ms_per_step']:.1f} "
                     f"| {row['wall_vs_this_process']:.2f}x | {row['cpu_vs_this_process']:.2f}x |")  # fmt: skip
    lines += ["", "Medians over the rounds; the places took turns within each round."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet20", help="a registered model name (default: resnet20)")
    parser.add_argument("--batch", type=int, default=32, help="examples per step (default: 32, the ResNet-20 flow's)")
    parser.add_argument("--steps", type=int, default=100, help="timed steps per place and round (default: 100)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all three places (default: 3)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"where the JSON goes (default: {RESULTS})")
    args = parser.parse_args(argv)
    for name in ("batch", "steps", "rounds"):
        if getattr(args, name) < 1:
            print(f"dask_worker_speed: --{name} must be at least 1, got {getattr(args, name)}", file=sys.stderr)
            return 2
    from bmrs.models import MODELS

    if args.model not in MODELS:
        print(f"dask_worker_speed: unknown --model {args.model!r}; known: {', '.join(sorted(MODELS))}", file=sys.stderr)
        return 2
    result = run(args.model, args.batch, args.steps, args.rounds)
    write_json(args.out, result)
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

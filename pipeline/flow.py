"""The compression flow: Prefect tasks that call ``pipeline.stages.steps`` and nothing else.

    train (method) ─┐
    train (dense) ──┼─> compress (fold, slice, ONNX + parity) ─> latency (ORT) ─> [post-training] ─┐
                    └─> dense reference (ONNX + parity) ──────────┘                                  │
                                                                         report.json <─ checks <─────┘

Each ONNX file is compared with the PyTorch model whose accuracy is reported (the masked model, the
dense baseline) on real test examples, and the reported metrics are measured on the file through ONNX
Runtime; a mismatch fails the run, keeping the trained stages. ``checks`` applies the sanity bounds
(``FlowConfig.checks``): a model near chance or far below the dense reference ends the run
``degraded``, its report still written.

The post-training stage (``post_training.enabled``) trains its own unpruned noisy model and writes
one accuracy-vs-compression curve per criterion; it runs last so the method's results come first.
"""
from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from pipeline.stages import steps
from pipeline.config import FlowConfig
from pipeline.stages.post_training import post_training_stage

# Models and datasets are not hashable inputs; every stage writes its result into the run directory.
stage = task(cache_policy=NO_CACHE, persist_result=False)

train_task = stage(steps.train_stage, name="train")
compress_task = stage(steps.compress_stage, name="compress")
dense_task = stage(steps.dense_stage, name="dense-reference")
latency_task = stage(steps.latency_stage, name="latency")
post_training_task = stage(post_training_stage, name="post-training")
checks_task = stage(steps.checks_stage, name="checks")
report_task = stage(steps.report_stage, name="report")


@flow(name="bmrs-compress", persist_result=False, log_prints=True)
def compress_flow(config: FlowConfig, run_dir: Path, resume: bool = False) -> Path:
    """``resume``: the run directory holds an interrupted run of ``config``; training stages continue
    from their checkpoints (finished ones are not redone), finished post-training curves are kept,
    the other stages run again."""
    started = time.perf_counter()
    data = steps.load_data(config)
    pruned_checkpoint = train_task(config, data, run_dir, baseline=False, resume=resume)
    dense_checkpoint = train_task(config, data, run_dir, baseline=True, resume=resume) if config.baseline.enabled else None
    pruned = compress_task(config, data, run_dir, pruned_checkpoint)
    dense = dense_task(config, data, run_dir, dense_checkpoint)
    latency = latency_task(config, data, run_dir)
    curves = post_training_task(config, data, run_dir, resume=resume) if config.post_training.enabled else None
    checks = checks_task(config, data, run_dir, dense, pruned)
    return report_task(config, run_dir, dense, pruned, latency, time.perf_counter() - started, curves, checks)

"""The compression flow: Prefect tasks that call ``pipeline.stages`` and nothing else.

    train (method) ─> [sparsify] ─┐
    train (dense) ────────────────┼─> compress (fold, slice, ONNX + parity) ─> latency (ORT) ─> inference energy ─> [post-training] ─┐
                                  └─> dense reference (ONNX + parity) ──────────┘                                                    │
                                                                                                    report.json <─ checks <──────────┘

``sparsify`` (``sparsify.enabled``: BMR on individual weights, ``pipeline.stages.sparsifying``)
starts from the method's trained model, sliced, and removes single weights; compress then ships its
model, dense-with-zeros, with the sizes a sparse encoding of it would have.

Each ONNX file is compared with the PyTorch model whose accuracy is reported (the masked model, the
dense baseline) on real test examples, and the reported metrics are measured on the file through ONNX
Runtime; a mismatch fails the run, keeping the trained stages. ``checks`` applies the sanity bounds
(``FlowConfig.checks``): a model near chance or far below the dense reference ends the run
``degraded``, its report still written.

With ``energy.enabled`` one codecarbon tracker measures the stages (training, fine-tuning,
sparsification, the dense reference's training, slicing and export, benchmarking) and the inference
energy of both models (``pipeline.stages.energy``); a tracker that fails leaves its figures missing,
never the run.

Each run ends by publishing Prefect artifacts (``pipeline.artifacts``): report.md, a table of the
metrics and links to the ONNX files and plots, so that Prefect's UI shows more than task states.

The post-training stage (``post_training.enabled``) trains its own unpruned noisy model and writes
one accuracy-vs-compression curve per criterion; it runs last so the method's results come first.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from pipeline.artifacts import artifact_key, comparison_rows, file_links, publish, run_metric_rows
from pipeline.stages import shipping, steps
from pipeline.config import FlowConfig
from pipeline.retrying import task_options
from pipeline.stages.energy import BENCHMARKING, SLICING_EXPORT, SPARSIFY, inference_energy_stage, run_energy
from pipeline.stages.post_training import post_training_stage
from pipeline.stages.sparsifying import sparsify_stage

# Models and datasets are not hashable inputs; every stage writes its result into the run directory,
# and a comparison reuses a whole run directory by its recorded key (pipeline.cache), so Prefect's
# own caching stays off.
stage = task(cache_policy=NO_CACHE, persist_result=False)
# Stages bound by file and API I/O (export and its checks, writing the report) retry a transient
# failure with backoff (pipeline.retrying); training and measuring never retry.
io_stage = task(cache_policy=NO_CACHE, persist_result=False, **task_options())

train_task = stage(steps.train_stage, name="train")
sparsify_task = stage(sparsify_stage, name="sparsify")
compress_task = io_stage(shipping.compress_stage, name="compress")
dense_task = io_stage(shipping.dense_stage, name="dense-reference")
latency_task = stage(steps.latency_stage, name="latency")
energy_task = stage(inference_energy_stage, name="inference-energy")
post_training_task = stage(post_training_stage, name="post-training")
checks_task = stage(steps.checks_stage, name="checks")
report_task = io_stage(steps.report_stage, name="report")


@flow(name="bmrs-compress", persist_result=False, log_prints=True)
def compress_flow(config: FlowConfig, run_dir: Path, resume: bool = False) -> Path:
    """``resume``: the run directory holds an interrupted run of ``config``; training stages (the
    sparsify stage too) continue from their checkpoints (finished ones are not redone), finished
    post-training curves are kept,
    the other stages run again (each stage's energy adds the resumed part to the interrupted one)."""
    started = time.perf_counter()
    data = steps.load_data(config)
    with run_energy(config, run_dir, resume=resume) as energy:
        with energy.training_phases(baseline=False) as on_phase:
            pruned_checkpoint = train_task(config, data, run_dir, baseline=False, resume=resume, on_phase=on_phase)
        sparsified = None
        if config.sparsify.enabled:
            with energy.stage(SPARSIFY):
                sparsified = sparsify_task(config, data, run_dir, pruned_checkpoint, resume=resume)
        dense_checkpoint = None
        if config.baseline.enabled:
            with energy.training_phases(baseline=True) as on_phase:
                dense_checkpoint = train_task(config, data, run_dir, baseline=True, resume=resume, on_phase=on_phase)
        with energy.stage(SLICING_EXPORT):
            pruned = compress_task(config, data, run_dir, pruned_checkpoint)
            dense = dense_task(config, data, run_dir, dense_checkpoint)
        with energy.stage(BENCHMARKING):
            latency = latency_task(config, data, run_dir)
            inference = energy_task(config, data, run_dir, energy) if energy.enabled else None
        curves = post_training_task(config, data, run_dir, resume=resume) if config.post_training.enabled else None
        checks = checks_task(config, data, run_dir, dense, pruned)
        report = report_task(
            config, run_dir, dense, pruned, latency, time.perf_counter() - started, curves, checks, energy.report(inference),
            sparsified,
        )
    publish_run_artifacts(config, run_dir, report)
    return report


def publish_run_artifacts(config: FlowConfig, run_dir: Path, report_path: Path) -> None:
    """The run in Prefect's UI: report.md, the metrics table, links to the ONNX models and plots."""
    report = json.loads(report_path.read_text())
    markdown_path = run_dir / "report.md"
    markdown = markdown_path.read_text() if markdown_path.is_file() else f"report.md was not written; see {report_path}"
    files = [run_dir / "model.onnx", run_dir / "dense.onnx", markdown_path, report_path, run_dir / "train" / "curve.png"]
    publish(config.name, markdown=markdown, table=run_metric_rows(report), links=file_links(files), what=f"run {run_dir.name}")


@flow(name="bmrs-compare-report", persist_result=False, log_prints=True)
def comparison_report_flow(run_dirs: list[Path], out_dir: Path, title: str | None = None) -> Path:
    """The comparison's report.md, report.json and plots (``pipeline.reporting.write_comparison``),
    published as Prefect artifacts like a run's: the markdown, one table row per method, links."""
    from pipeline.reporting import write_comparison

    report_path = write_comparison(run_dirs, out_dir, title=title)
    comparison = json.loads((out_dir / "report.json").read_text())
    files = [report_path, out_dir / "report.json", *sorted(out_dir.glob("*.png"))]
    key = artifact_key(out_dir.parent.name, out_dir.name)
    publish(key, markdown=report_path.read_text(), table=comparison_rows(comparison), links=file_links(files),
            what=f"comparison {out_dir}")  # fmt: skip
    return report_path

"""One real ``bmrs compare`` of the shipped ``lenet5_combined`` flow with BMR on weights (none,
bmr_weights, l2:ratio=0.3+bmr_weights; one seed) on tiny 28x28 data, through the CLI's own run path:
bmr_weights sparsifies the very dense baseline the seed shares; the combined run prunes structures,
slices, then removes weights, ships the result dense-with-zeros, parity-checked, with its sparse
sizes, latency and the sparsify stage's energy; the comparison gives weight sparsity and total removed
beside the structured compression. (One process: Prefect's start costs most of its time.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import torch
from pipeline_data import write_blobs
from prefect_env import prefect_environment

from export.onnx_options import read_metadata
from export.saved import load_sliced

REPO = Path(__file__).resolve().parents[3]
FLOW = "lenet5_combined"
COMBINED = "l2-ratio=0.3+bmr_weights"


def write_images(path: Path) -> Path:
    """Gaussian blobs as 28x28 images, LeNet5's input size: learnable in two epochs."""
    return write_blobs(path, train=320, test=80, side=28)


SETTINGS = [
    "data.dataset=npz", "data.root=images.npz", "train.epochs=2", "train.finetune_epochs=1", "train.lr=0.005",
    # 256 training examples: the KL term (KL / N_train) would pull every posterior to the prior and BMR
    # would remove nearly every weight, so it is tempered; the posteriors start and widen faster.
    "sparsify.epochs=2", "sparsify.finetune_epochs=1", "sparsify.max_rounds=1", "sparsify.batch_size=16",
    "sparsify.kl_scale=0.01", "sparsify.lr=0.003", "sparsify.init_std=0.003",
    "export.dynamo=false",
    "latency.repeats=3", "latency.warmup=1", "latency.batch_sizes=[1, 8]",
    "energy.window_s=0.2", "energy.rounds=1", "energy.batch_sizes=[8]", "checks.max_accuracy_drop=null",
]  # fmt: skip


def test_compare_runs_bmr_on_weights_alone_and_after_structures(tmp_path):
    write_images(tmp_path / "images.npz")
    sets = [arg for setting in SETTINGS for arg in ("--set", setting)]
    command = [sys.executable, "-m", "pipeline.compare", str(REPO / "flows.yaml"), "--flow", FLOW, "--methods", "none",
               "bmr_weights", "l2:ratio=0.3+bmr_weights", "--seeds", "0", "--no-progress", *sets]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, env=prefect_environment(tmp_path), capture_output=True, text=True,
                            timeout=900)  # fmt: skip
    out = tmp_path / "runs" / FLOW / "compare"
    summary = json.loads((out / "compare.json").read_text())
    states = {row["method"]: row["state"] for row in summary["runs"]}
    assert states == {"none": "completed", "bmr_weights": "completed", COMBINED: "completed"}, result.stderr[-3000:]
    assert result.returncode == 0, result.stderr[-3000:]
    assert {m["label"]: (m["method"], m["sparsify"]) for m in summary["methods"]} == {
        "none": ("none", False), "bmr_weights": ("bmr_weights", True), COMBINED: ("l2+bmr_weights", True)}

    runs = {label: out / label / "seed0" for label in ("none", "bmr_weights", COMBINED)}
    dense = out / "dense" / "seed0" / "baseline" / "checkpoint.pt"
    # bmr_weights starts from the seed's dense baseline itself: its training stage trained nothing.
    assert os.path.samefile(runs["bmr_weights"] / "train" / "checkpoint.pt", dense)
    reports = {label: json.loads((run / "report.json").read_text()) for label, run in runs.items()}
    weights, combined, plain = (reports[label]["pruned"] for label in ("bmr_weights", COMBINED, "none"))
    assert reports[COMBINED]["method"] == "l2+bmr_weights" and reports["none"]["sparsify"] is None
    assert weights["structured_compression"] == 0.0 and weights["weight_sparsity"] > 0.05
    assert weights["compression"] == weights["total_removed"] > 0.05 and weights["params"] == plain["params"]
    assert plain["weight_sparsity"] == 0.0 and plain["total_removed"] == plain["compression"] == 0.0
    assert 0.0 < combined["structured_compression"] < combined["total_removed"] < 1.0 and combined["weight_sparsity"] > 0.05
    assert combined["compression"] == combined["total_removed"] and combined["nonzero_params"] < combined["params"]
    stage = reports[COMBINED]["sparsify"]
    assert stage["structured_compression"] == combined["structured_compression"]
    assert stage["rounds"] == 1 and stage["epochs"] == 3 and stage["removed_per_round"][0] > 0
    assert reports[COMBINED]["settings"]["sparsify"]["kl_scale"] == 0.01

    # What ships: the sparsified model, dense-with-zeros, checked against it and measured itself.
    run = runs[COMBINED]
    assert 0 <= reports[COMBINED]["onnx"]["max_abs_diff"] <= 1e-4
    sizes = combined["sparse_encoding"]
    assert sizes["deflate_bytes"] < sizes["onnx_bytes"] and sizes["onnx_zeros"] >= sizes["weights"] - sizes["nonzero_weights"]
    shipped = load_sliced(run / "sliced")
    x = torch.randn(3, 1, 28, 28)
    session = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert torch.allclose(shipped(x), torch.from_numpy(logits), atol=1e-4, rtol=1e-4)
    assert read_metadata(run / "model.onnx")["bmrs.method"] == "l2+bmr_weights"
    for runtime in ("CPUExecutionProvider", "torch-cpu"):
        assert reports["bmr_weights"]["latency"][runtime]["8"]["speedup_p50"] > 0
    # BMR's training energy is a stage of its own, counted in the comparison's training energy (the
    # shared dense baseline was only loaded here, so no baseline_training stage ran).
    stages = reports[COMBINED]["energy"]["stages"]
    assert list(stages) == ["training", "fine_tuning", "sparsify", "slicing_export", "benchmarking"]
    assert stages["sparsify"]["attempts"] == 1
    markdown = (run / "report.md").read_text()
    assert "## Weight sparsity (BMR on individual weights)" in markdown and "model.onnx is dense-with-zeros" in markdown
    assert "| sparsification (BMR on weights) |" in markdown
    assert f"{100 * combined['structured_compression']:.1f}% by slicing, then" in result.stdout

    comparison = json.loads((out / "report.json").read_text())
    groups = {group["label"]: group for group in comparison["groups"]}
    assert set(groups) == {"none", "bmr_weights", "l2+bmr_weights (ratio=0.3)"}
    assert groups["bmr_weights"]["metrics"]["weight_sparsity"]["mean"] == weights["weight_sparsity"]
    assert groups["l2+bmr_weights (ratio=0.3)"]["metrics"]["total_removed"]["mean"] == combined["total_removed"]
    text = (out / "report.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| method |"))
    assert "| compression | structured | weight sparsity | total removed | params |" in header
    row = next(line for line in text.splitlines() if line.startswith("| bmr_weights |"))
    assert f"| {100 * weights['compression']:.1f}% | 0.0% | {100 * weights['weight_sparsity']:.1f}% |" in row

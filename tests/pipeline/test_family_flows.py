"""The real-architecture flows end to end on tiny data: a ResNet-20 whose residual streams are coupled
groups, and a ViT, trained, pruned, sliced, exported and verified by one `bmrs run` each."""
from __future__ import annotations

import json
import subprocess
import sys

import onnxruntime as ort
import pytest
import torch
from pipeline_data import REPO, write_blobs
from prefect_env import prefect_environment

from export.onnx_options import read_metadata
from export.saved import load_sliced

TINY = [
    "--no-progress",
    "--set", "data.dataset=npz", "--set", "data.root=blobs.npz",
    "--set", "train.epochs=2", "--set", "train.prune_start=1", "--set", "train.finetune_epochs=1", "--set", "train.batch_size=16", "--set", "train.lr=0.005",
    "--set", "train.criterion={name: l2, ratio: 0.5}", "--set", "baseline.enabled=false",
    "--set", "latency.repeats=3", "--set", "latency.warmup=1", "--set", "latency.batch_sizes=[1]",
    "--set", "energy.window_s=0.2", "--set", "energy.rounds=1", "--set", "checks.min_accuracy_over_chance=0.0",
]  # fmt: skip


ON_GPU = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"))


@pytest.mark.parametrize("device", ["cpu", ON_GPU])
@pytest.mark.parametrize("flow", ["resnet20_fmnist_bmrs_n", "vit_tiny_fmnist_bmrs_n"])
def test_a_family_flow_compresses_and_ships_what_it_measured(tmp_path, flow, device):
    write_blobs(tmp_path / "blobs.npz", train=320, test=64)
    command = [sys.executable, "-m", "pipeline.cli", "run", str(REPO / "flows.yaml"), "--flow", flow, *TINY, "--set", f"train.device={device}"]
    result = subprocess.run(command, check=False, cwd=tmp_path, env=prefect_environment(tmp_path), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs" / flow).iterdir()
    report = json.loads((run_dir / "report.json").read_text())
    pruned = report["pruned"]
    assert 0.0 < pruned["compression"] < 1.0
    assert pruned["accuracy"] == pytest.approx(pruned["masked_accuracy"], abs=1e-6)
    assert 0 <= report["onnx"]["max_abs_diff"] <= 1e-4
    # The sliced PyTorch model reloads from its state dict and description, and computes model.onnx.
    sliced = load_sliced(run_dir / "sliced")
    x = torch.randn(3, 1, 8, 8)
    session = ort.InferenceSession(str(run_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert torch.allclose(sliced(x), torch.from_numpy(logits), atol=1e-4, rtol=1e-4)
    assert read_metadata(run_dir / "model.onnx")["bmrs.compression"] == f"{pruned['compression']:.6f}"
    widths = pruned["widths"]
    if flow.startswith("resnet20"):
        # l2 halves every group. Stage 2's stream keeps one width in every block and the shortcut;
        # stage 1's stream is the stem's group, which the flow spares (noise_on_first_layer: false).
        assert {widths[f"layer2.{block}.conv2"] for block in range(3)} | {widths["layer2.0.shortcut.0"]} == {16}
        assert {widths[f"layer1.{block}.conv2"] for block in range(3)} == {16} and widths["stem.0"] == 16
        assert widths["layer1.0.conv1"] == 8
    else:
        assert {widths[f"encoder.layers.encoder_layer_{i}.mlp.0"] for i in range(4)} == {64}
        assert {widths[f"encoder.layers.encoder_layer_{i}.self_attention"] for i in range(4)} == {2}  # heads

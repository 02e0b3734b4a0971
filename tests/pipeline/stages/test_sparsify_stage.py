"""The sparsify stage (BMR on individual weights) without Prefect: what it starts from and writes, an
interrupted stage resumed to the uninterrupted result, the resume check before a resume, and
compress_stage shipping its model dense-with-zeros, checked and measured like every export."""
from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
from pipeline_data import write_blobs
from onnx import numpy_helper

import bmrs.sparsify.loop as sparsify_loop
from bmrs.train.checkpoint import CheckpointError, read_checkpoint
from export.onnx_options import read_metadata
from export.saved import load_sliced
from pipeline.config import load_flow
from pipeline.stages import shipping, sparsifying, steps
from pipeline.stages.resume import check_checkpoints, check_resumable

REPO = Path(__file__).resolve().parents[3]
# A dense MLP trained one epoch, then BMR on its weights: 24 steps per epoch at batch 16, and a
# learning rate that widens the posteriors within those few steps, so the dF steps remove weights.
SETTINGS = [
    "model.name=mlp", "model.hidden_width=24", "train.criterion=null", "train.epochs=1", "train.finetune_epochs=0",
    "train.lr=0.01", "train.progress=false", "baseline.enabled=false", "export.dynamo=false",
    "sparsify.enabled=true", "sparsify.epochs=3", "sparsify.finetune_epochs=1", "sparsify.max_rounds=2",
    "sparsify.batch_size=16", "sparsify.lr=0.01", "sparsify.init_std=0.01",
]  # fmt: skip


def tiny_config(tmp_path: Path, *extra: str):
    blobs = tmp_path / "blobs.npz"
    if not blobs.exists():
        write_blobs(blobs)
    overrides = ["data.dataset=npz", f"data.root={blobs}", f"output.runs_dir={tmp_path / 'runs'}", *SETTINGS, *extra]
    return load_flow(REPO / "flows.yaml", "default", overrides)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def trained_run(config, data, run_dir: Path) -> Path:
    run_dir.mkdir(parents=True)
    return steps.train_stage(config, data, run_dir, baseline=False)


def without_seconds(result: dict) -> dict:
    result = json.loads(json.dumps(result))
    result.pop("df_step_seconds"), result.pop("epoch_seconds_mean")
    for record in result.get("record", {}).get("rounds", []):
        record.pop("prune_seconds"), record.pop("epoch_seconds")
    for record in result.get("record", {}).get("epochs", []):
        record.pop("seconds")
    return result


def test_an_interrupted_stage_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    config = tiny_config(tmp_path)
    data = steps.load_data(config)
    straight_dir, killed_dir = tmp_path / "straight", tmp_path / "killed"
    straight = sparsifying.sparsify_stage(config, data, straight_dir, trained_run(config, data, straight_dir))
    assert 0.0 < straight["sparsity"] < 1.0 and straight["rounds"] >= 1 and straight["structured_compression"] == 0.0
    assert len(straight["df_step_seconds"]) == straight["rounds"] and straight["removed_per_round"][0] > 0

    checkpoint = trained_run(config, data, killed_dir)
    run_epoch = sparsify_loop._run_epoch
    calls = []

    def dies_in_the_fourth_epoch(*args, **kwargs):  # the fit's 3 epochs, then round 1's fine-tuning
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return run_epoch(*args, **kwargs)

    monkeypatch.setattr(sparsify_loop, "_run_epoch", dies_in_the_fourth_epoch)
    with pytest.raises(KeyboardInterrupt):
        sparsifying.sparsify_stage(config, data, killed_dir, checkpoint)
    monkeypatch.setattr(sparsify_loop, "_run_epoch", run_epoch)
    meta = read_checkpoint(sparsifying.checkpoint_path(killed_dir)).meta
    assert meta["position"]["round"] == 1 and meta["position"]["pruned"] and not meta["finished"]
    assert not (killed_dir / "sparsify" / "result.json").exists()

    check_checkpoints(killed_dir)  # what `bmrs resume` checks before it marks the run running
    check_resumable(config, killed_dir, data)
    resumed = sparsifying.sparsify_stage(config, data, killed_dir, checkpoint, resume=True)
    assert without_seconds(resumed) == without_seconds(straight)
    files = [json.loads((d / "sparsify" / "result.json").read_text()) for d in (killed_dir, straight_dir)]
    assert without_seconds(files[0]) == without_seconds(files[1])
    models = [load_sliced(d / "sparsify" / "model") for d in (killed_dir, straight_dir)]
    for key, tensor in models[1].state_dict().items():
        assert torch.equal(models[0].state_dict()[key], tensor), key
    # A finished stage resumed again trains nothing and gives the same model.
    monkeypatch.setattr(sparsify_loop, "_run_epoch", lambda *a, **k: pytest.fail("a finished stage trained again"))
    again = sparsifying.sparsify_stage(config, data, killed_dir, checkpoint, resume=True)
    assert without_seconds(again) == without_seconds(straight)


def test_a_stage_checkpoint_of_other_settings_is_refused_before_the_resume(tmp_path):
    config = tiny_config(tmp_path, "sparsify.max_rounds=1", "sparsify.epochs=1", "sparsify.finetune_epochs=0")
    data = steps.load_data(config)
    run_dir = tmp_path / "run"
    sparsifying.sparsify_stage(config, data, run_dir, trained_run(config, data, run_dir))
    check_resumable(config, run_dir, data)
    other = tiny_config(tmp_path, "sparsify.max_rounds=1", "sparsify.epochs=1", "sparsify.finetune_epochs=0",
                        "sparsify.lr=0.002")  # fmt: skip
    with pytest.raises(CheckpointError, match="sparsify.pt.*different settings.*lr"):
        check_resumable(other, run_dir, data)
    sparsifying.checkpoint_path(run_dir).write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="sparsify.pt.*corrupt"):
        check_checkpoints(run_dir)


def test_compress_ships_the_sparsified_model_dense_with_zeros(tmp_path):
    config = tiny_config(tmp_path, "sparsify.max_rounds=1")
    data = steps.load_data(config)
    run_dir = tmp_path / "run"
    checkpoint = trained_run(config, data, run_dir)
    stage = sparsifying.sparsify_stage(config, data, run_dir, checkpoint)
    pruned = shipping.compress_stage(config, data, run_dir, checkpoint)
    sparse = load_sliced(run_dir / "sliced")
    zeros = sum(int((module.weight == 0).sum()) for module in sparse.modules() if isinstance(module, torch.nn.Linear))
    weights = sum(module.weight.numel() for module in sparse.modules() if isinstance(module, torch.nn.Linear))
    assert pruned["weight_sparsity"] == pytest.approx(zeros / weights) and pruned["weight_sparsity"] > 0.05
    assert pruned["weight_sparsity"] == pytest.approx(stage["sparsity"])
    assert pruned["structured_compression"] == 0.0 and pruned["params"] == pruned["unpruned_params"]
    nonzero = sum(int((p != 0).sum()) for p in sparse.parameters())
    assert pruned["nonzero_params"] == nonzero
    assert pruned["total_removed"] == pytest.approx(1 - nonzero / pruned["unpruned_params"])
    assert pruned["compression"] == pruned["total_removed"] > 0.05
    # The file holds the zeros, is parity-checked against the sparsified model, and its accuracy is its own.
    sizes = pruned["sparse_encoding"]
    assert 0 < sizes["deflate_bytes"] < sizes["onnx_bytes"] and sizes["csr_bytes"] < sizes["dense_weight_bytes"]
    assert sizes["sparse_model_bytes"] > sizes["csr_bytes"] and sizes["weights"] == weights
    stored = [numpy_helper.to_array(t) for t in onnx.load(str(run_dir / "model.onnx")).graph.initializer]
    assert sum(int((array == 0).sum()) for array in stored) == sizes["onnx_zeros"] >= zeros
    assert pruned["onnx"]["parity"]["max_abs_diff"] <= 1e-4
    assert pruned["accuracy"] == pytest.approx(pruned["torch_accuracy"], abs=1e-2)
    metadata = read_metadata(run_dir / "model.onnx")
    assert metadata["bmrs.method"] == "bmr_weights" and metadata["bmrs.compression"] == f"{pruned['compression']:.6f}"
    assert metadata["bmrs.weight_sparsity"] == f"{pruned['weight_sparsity']:.6f}"
    # The latency stage times the very module compress exported.
    modules = steps._exported_modules(config, data, run_dir)
    for key, tensor in sparse.state_dict().items():
        assert torch.equal(modules["pruned"].state_dict()[key], tensor)

"""Export options users of inference servers expect: tensor names, float16, a checked opset,
metadata, and layer widths rounded to kernel-friendly multiples."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from benchmarks.ort_runtime import input_feed, single_float_input
from bmrs.nn.fold import fold_noise
from bmrs.nn.groups import noise_groups
from export import onnx_export
from export.onnx_export import OnnxConfig, OnnxParityError, OnnxResult, export_onnx, max_opset, write_metadata
from export.onnx_options import PRODUCER_NAME, project_version, read_metadata, run_metadata
from export.slicing import round_up_mask, slice_model, surviving_widths
from export.verify import OnnxModule, check_data_parity, onnx_metrics
from export_cases import NoisyCase, make_noisy
from layer_patterns import noisy_pattern


@pytest.fixture(scope="module")
def lenet() -> tuple[NoisyCase, nn.Module]:
    case = make_noisy("lenet5")
    return case, slice_model(case.model, case.x[:2]).model.eval()


@pytest.fixture(scope="module")
def renamed(lenet, tmp_path_factory) -> OnnxResult:
    case, sliced = lenet
    config = OnnxConfig(input_name="pixels", output_name="scores", check_batch_sizes=(1, 5))
    return export_onnx(sliced, case.x[:3], tmp_path_factory.mktemp("renamed") / "model.onnx", config)


@pytest.fixture(scope="module")
def half(lenet, tmp_path_factory) -> OnnxResult:
    case, sliced = lenet
    return export_onnx(sliced, case.x[:3], tmp_path_factory.mktemp("half") / "model.onnx", OnnxConfig(fp16=True))


def run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    return session.run(None, {spec.name: x.astype(np.float16 if spec.type == "tensor(float16)" else np.float32)})[0]


# --- tensor names -------------------------------------------------------------------------------


def test_a_renamed_export_carries_its_names_and_still_verifies(lenet, renamed):
    case, sliced = lenet
    proto = onnx.load(str(renamed.path))
    assert [v.name for v in proto.graph.input] == ["pixels"] and [v.name for v in proto.graph.output] == ["scores"]
    assert (renamed.input_name, renamed.output_name) == ("pixels", "scores")
    # Everything downstream reads the names from the file itself.
    with torch.no_grad():
        assert torch.allclose(OnnxModule(renamed.path)(case.x), sliced(case.x), atol=1e-4)
    parity = check_data_parity(case.model, renamed.path, case.x, OnnxConfig(), describe="renamed")
    assert parity.max_abs_diff <= parity.bound
    session = ort.InferenceSession(str(renamed.path), providers=["CPUExecutionProvider"])
    assert list(input_feed("pruned", session, case.x.numpy())) == ["pixels"]
    assert single_float_input("pruned", session, tuple(case.x.shape)) == "pixels"


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"input_name": ""}, "not a plain identifier"),
        ({"input_name": "in put"}, "not a plain identifier"),
        ({"output_name": "1logits"}, "not a plain identifier"),
        ({"output_name": "x" * 129}, "at most 128"),
        ({"input_name": "x", "output_name": "x"}, "both 'x'; give the two tensors different names"),
    ],
)
def test_bad_tensor_names_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        OnnxConfig(**settings)


def test_a_tensor_name_must_be_a_string():
    with pytest.raises(TypeError, match="input_name must be a string"):
        OnnxConfig(input_name=3)


# --- opset ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, error, message",
    [
        ({"opset": 17}, ValueError, r"opset 17 is too old for this exporter; use opset >= 18, or dynamo=False"),
        ({"opset": 8, "dynamo": False}, ValueError, r"use opset >= 9"),
        ({"opset": 10_000}, ValueError, r"newer than the installed exporter writes .*choose 18 to"),
        ({"opset": True}, TypeError, "opset must be an int"),
        ({"opset": "18"}, TypeError, "opset must be an int"),
    ],
)
def test_opset_is_validated(settings, error, message):
    with pytest.raises(error, match=message):
        OnnxConfig(**settings)


def test_the_requested_opset_is_the_one_written(tmp_path):
    case = make_noisy("mlp1")
    sliced = slice_model(case.model, case.x[:2]).model
    opset = min(20, max_opset(dynamo=True))
    result = export_onnx(sliced, case.x[:3], tmp_path / "m.onnx", OnnxConfig(opset=opset, check_batch_sizes=(2,)))
    assert result.opset == opset


# --- float16 -------------------------------------------------------------------------------------


def test_fp16_export_is_float16_and_within_its_bound_of_the_float32_model(lenet, half):
    case, sliced = lenet
    proto = onnx.load(str(half.path))
    for value in (*proto.graph.input, *proto.graph.output):
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert half.fp16 and half.summary()["dtype"] == "float16"
    config = OnnxConfig(fp16=True)
    # float16 rounding shows, but within the bound the defaults document.
    assert 0.0 < half.max_abs_diff <= config.parity_bound(half.largest_output, fp16=True)
    assert next(sliced.parameters()).dtype == torch.float32  # the caller's model is never cast
    assert run(half.path, case.x.numpy()).dtype == np.float16
    logits = OnnxModule(half.path)(case.x)
    assert logits.dtype == torch.float32
    with torch.no_grad():
        expected = sliced(case.x)
    assert float((logits - expected).abs().max()) <= config.parity_bound(float(expected.abs().max()), fp16=True)


def test_data_parity_of_an_fp16_file_uses_the_fp16_tolerances(lenet, half):
    case, _ = lenet
    config = OnnxConfig()
    parity = check_data_parity(case.model, half.path, case.x, config, describe="half")
    assert parity.bound == pytest.approx(config.fp16_tolerance + config.fp16_relative_tolerance * parity.largest_output)
    assert 0.0 < parity.max_abs_diff <= parity.bound
    metrics = onnx_metrics(half.path, _split(case))
    assert 0.0 <= metrics.accuracy <= 1.0


def _split(case: NoisyCase):
    from bmrs.data import Split

    return Split(case.x, torch.arange(case.x.shape[0]) % 10)


def test_benchmark_feeds_cast_to_the_files_dtype(half):
    session = ort.InferenceSession(str(half.path), providers=["CPUExecutionProvider"])
    x = np.zeros((2, 1, 28, 28), dtype=np.float32)
    (feed,) = input_feed("pruned", session, x).values()
    assert feed.dtype == np.float16
    assert session.run(None, input_feed("pruned", session, x))[0].shape == (2, 10)
    with pytest.raises(ValueError, match="tensor\\(float16\\); feed it through benchmarks.ort_runtime.input_feed"):
        single_float_input("pruned", session, x.shape)


def test_a_too_tight_fp16_bound_names_the_fp16_settings(lenet, tmp_path):
    case, sliced = lenet
    path = tmp_path / "tight.onnx"
    config = OnnxConfig(fp16=True, fp16_tolerance=0.0, fp16_relative_tolerance=0.0, check_batch_sizes=(2,))
    with pytest.raises(OnnxParityError, match=r"fp16_tolerance 0 \+ fp16_relative_tolerance 0 .*float16 rounding"):
        export_onnx(sliced, case.x[:3], path, config)
    assert not path.exists()


def test_an_fp16_graph_onnxruntime_cannot_run_fails_in_one_line(lenet, tmp_path, monkeypatch):
    case, sliced = lenet

    def refuse(*args, **kwargs):
        raise RuntimeError(
            "[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an implementation for Conv(11) node with name 'conv'\n"
            "more detail"
        )

    monkeypatch.setattr(onnx_export.ort, "InferenceSession", refuse)
    path = tmp_path / "refused.onnx"
    with pytest.raises(OnnxParityError) as caught:
        export_onnx(sliced, case.x[:3], path, OnnxConfig(fp16=True, check_batch_sizes=(2,)))
    message = str(caught.value)
    assert "\n" not in message
    assert "cannot run this model's float16 graph" in message and "Conv(11)" in message
    assert "export.fp16: false" in message
    assert not path.exists() and list(tmp_path.iterdir()) == []


# --- metadata ------------------------------------------------------------------------------------


def test_metadata_round_trips_without_touching_the_graph(renamed, tmp_path):
    path = tmp_path / "model.onnx"
    shutil.copyfile(renamed.path, path)
    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28), dtype=np.float32)
    before, graph = run(path, x), onnx.load(str(path)).graph.SerializeToString(deterministic=True)
    write_metadata(path, {"bmrs.method": "bmrs_n", "bmrs.accuracy": "0.875"})
    write_metadata(path, {"bmrs.accuracy": "0.9"})  # a key written again is replaced, others kept
    assert read_metadata(path) == {"bmrs.method": "bmrs_n", "bmrs.accuracy": "0.9"}
    proto = onnx.load(str(path))
    assert (proto.producer_name, proto.producer_version) == (PRODUCER_NAME, project_version())
    assert proto.graph.SerializeToString(deterministic=True) == graph
    after = run(path, x)
    assert after.tobytes() == before.tobytes()
    onnx.checker.check_model(str(path), full_check=True)
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temporary file left


def test_metadata_refuses_what_is_not_a_string_and_a_missing_file(renamed, tmp_path):
    path = tmp_path / "model.onnx"
    shutil.copyfile(renamed.path, path)
    with pytest.raises(TypeError, match="str\\(\\) the value"):
        write_metadata(path, {"bmrs.accuracy": 0.9})
    with pytest.raises(TypeError, match="non-empty string keys"):
        write_metadata(path, {"": "x"})
    with pytest.raises(FileNotFoundError, match="export it first"):
        write_metadata(tmp_path / "absent.onnx", {"a": "b"})
    assert read_metadata(path) == {}


def test_run_metadata_prefixes_keys_and_records_version_flow_and_shape():
    props = run_metadata("default", (1, 28, 28), {"method": "bmrs_n", "accuracy": "0.9", "round_to": None})
    assert props == {
        "bmrs.method": "bmrs_n", "bmrs.accuracy": "0.9", "bmrs.version": project_version(),
        "bmrs.flow": "default", "bmrs.input_shape": '["batch", 1, 28, 28]',
    }  # fmt: skip
    assert project_version() != "unknown"  # the project is installed in the test environment


# --- round_to ------------------------------------------------------------------------------------


def check_rounded(result, noisy_model: nn.Module, x: torch.Tensor, round_to: int) -> None:
    full = surviving_widths(fold_noise(noisy_model)[0])
    for path, width in result.widths.items():
        assert width % round_to == 0 or width == full[path], (path, width, full[path])
    with torch.no_grad():
        assert float((result.model.eval()(x) - noisy_model.eval()(x)).abs().max()) <= 1e-5
    plain = slice_model(noisy_model, x[:2])
    assert result.compression_unrounded == plain.compression >= result.compression
    assert result.pruned_params_unrounded == plain.pruned_params <= result.pruned_params


@pytest.mark.parametrize("round_to", [4, 8])
def test_round_to_keeps_lenet5s_function_and_rounds_its_widths(round_to):
    case = make_noisy("lenet5")
    result = slice_model(case.model, case.x[:2], round_to=round_to)
    assert result.round_to == round_to
    check_rounded(result, case.model, case.x, round_to)
    assert result.compression < result.compression_unrounded  # LeNet5's random masks leave odd widths


def masked_resnet(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """TinyResNet with noise on its default points (the stem and both blocks' conv2 form one
    residual group), random posteriors and about half of every group pruned."""
    model, x = noisy_pattern("resnet_blocks", seed)
    generator = torch.Generator().manual_seed(seed + 100)
    for group in noise_groups(model):
        drop = torch.zeros(group.num_structures, dtype=torch.bool)
        drop[torch.randperm(group.num_structures, generator=generator)[:3]] = True  # 8 -> 5 kept
        group.prune_(drop)
    return model.eval(), x


def test_round_to_keeps_a_residual_groups_function_and_equal_widths():
    model, x = masked_resnet()
    result = slice_model(model, x, round_to=3)
    check_rounded(result, model, x, 3)
    residual = [result.widths[path] for path in ("stem", "block1.conv2", "block2.conv2")]
    assert residual == [6, 6, 6]  # 5 kept, rounded up to 6 in every member of the group


@pytest.mark.parametrize("round_to", [None, 1])
def test_round_to_off_slices_every_pruned_structure(round_to):
    case = make_noisy("mlp3")
    result = slice_model(case.model, case.x[:2], round_to=round_to)
    assert result.compression == result.compression_unrounded
    assert result.pruned_params == result.pruned_params_unrounded


def test_rounding_keeps_the_lowest_pruned_structures_up_to_the_full_width():
    mask = torch.tensor([False, True, False, True, True, False, False])
    assert round_up_mask(mask, 4).tolist() == [True, True, False, True, True, False, False]
    assert round_up_mask(mask, 5).tolist() == [True, True, True, True, True, False, False]
    assert round_up_mask(round_up_mask(mask, 5), 4).all()  # 5 kept: 8 is capped at the layer's 7
    assert round_up_mask(mask, None) is mask and round_up_mask(mask, 3) is mask


@pytest.mark.parametrize("round_to", [0, -8, 2.5, True, "8"])
def test_round_to_is_validated(round_to):
    case = make_noisy("mlp1")
    message = r"round_to must be an integer >= 1 \(e.g. 8 or 16\), or null for no rounding"
    with pytest.raises(ValueError, match=message):
        slice_model(case.model, case.x[:2], round_to=round_to)
    with pytest.raises(ValueError, match=message):
        OnnxConfig(round_to=round_to)


# --- a run's stages ------------------------------------------------------------------------------


def test_compress_and_dense_stages_export_with_the_options_and_record_metadata(tmp_path):
    from pipeline.config import load_flow
    from pipeline.stages import shipping, steps

    rng = np.random.default_rng(0)
    centres = rng.random((4, 8, 8))
    labels, test_labels = np.arange(320) % 4, np.arange(200) % 4
    np.savez(
        tmp_path / "blobs.npz",
        x=(centres[labels] + 0.5 * rng.standard_normal((320, 8, 8))).astype(np.float32), y=labels,
        x_test=(centres[test_labels] + 0.5 * rng.standard_normal((200, 8, 8))).astype(np.float32), y_test=test_labels,
    )  # fmt: skip
    flows = {
        "opts": {
            "data": {"dataset": "npz", "root": str(tmp_path / "blobs.npz")},
            "model": {"name": "mlp", "hidden_width": 20, "hidden_layers": 1},
            "train": {"epochs": 1, "finetune_epochs": 0, "lr": 0.01, "criterion": {"name": "l2", "ratio": 0.3}, "progress": False},
            "export": {"input_name": "pixels", "output_name": "scores", "fp16": True, "round_to": 8, "check_batch_sizes": [3]},
            "checks": {"parity_examples": 64},
            "output": {"runs_dir": str(tmp_path / "runs")},
        }
    }  # fmt: skip
    (tmp_path / "flows.yaml").write_text(json.dumps({"flows": flows}))  # JSON is YAML
    config = load_flow(tmp_path / "flows.yaml", "opts")
    data = steps.load_data(config)
    run_dir = steps.new_run_dir(config)
    pruned = shipping.compress_stage(config, data, run_dir, steps.train_stage(config, data, run_dir, baseline=False))
    dense = shipping.dense_stage(config, data, run_dir, None)

    assert pruned["round_to"] == 8 and pruned["compression_unrounded"] > pruned["compression"]
    assert pruned["widths"]["1"] == 16  # 20 - round(0.3 x 20) = 14 kept, rounded up to 16
    assert pruned["onnx"]["dtype"] == dense["onnx"]["dtype"] == "float16"
    meta = read_metadata(run_dir / "model.onnx")
    assert meta["bmrs.method"] == "l2" and json.loads(meta["bmrs.method_settings"])["ratio"] == 0.3
    assert float(meta["bmrs.compression"]) == pytest.approx(pruned["compression"], abs=1e-6)
    assert float(meta["bmrs.compression_unrounded"]) == pytest.approx(pruned["compression_unrounded"], abs=1e-6)
    assert float(meta["bmrs.accuracy"]) == pytest.approx(pruned["accuracy"], abs=1e-6)
    assert (meta["bmrs.round_to"], meta["bmrs.flow"], meta["bmrs.version"]) == ("8", "opts", project_version())
    assert json.loads(meta["bmrs.input_shape"]) == ["batch", *data.input_shape]
    dense_meta = read_metadata(run_dir / "dense.onnx")
    assert (dense_meta["bmrs.method"], dense_meta["bmrs.compression"]) == ("dense", "0")
    assert "bmrs.accuracy" not in dense_meta  # the untrained architecture's accuracy is not measured
    session = ort.InferenceSession(str(run_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["pixels"] and session.get_inputs()[0].type == "tensor(float16)"

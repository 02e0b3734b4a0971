from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import Tensor, nn

from bmrs.data import Split
from bmrs.train.metrics import classification_metrics
from export.onnx_export import OnnxConfig, OnnxParityError, OnnxResult, export_onnx
from export.slicing import slice_model
from export.verify import EndToEndParityError, check_data_parity, onnx_metrics
from export_cases import make_noisy

PARITY_TOLERANCE = 1e-4


@pytest.fixture(scope="module", params=["lenet5", "mlp3"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, OnnxResult]:
    case = make_noisy(request.param)
    sliced = slice_model(case.model, case.x[:2]).model
    path = tmp_path_factory.mktemp("onnx") / f"{request.param}.onnx"
    # Traced with a batch of 3; checked at 1 and 256, which the exporter never saw.
    result = export_onnx(sliced, case.x[:3], path, OnnxConfig(check_batch_sizes=(1, 256)))
    return sliced, result


def test_export_writes_a_checked_file_with_the_named_batch_axis(exported: tuple[nn.Module, OnnxResult]) -> None:
    _, result = exported
    assert result.path.is_file()
    assert result.file_bytes == result.path.stat().st_size > 0
    assert (result.opset, result.input_name, result.output_name) == (18, "input", "logits")
    assert result.checked_batch_sizes == (1, 256)
    assert 0.0 <= result.max_abs_diff <= PARITY_TOLERANCE
    proto = onnx.load(str(result.path))
    onnx.checker.check_model(proto, full_check=True)
    batch_axis = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_axis.dim_param and not batch_axis.HasField("dim_value")
    # One self-contained file: no external-data side file next to it.
    assert sorted(p.name for p in result.path.parent.iterdir()) == [result.path.name]


@pytest.mark.parametrize("batch", [1, 5, 256])
def test_onnxruntime_matches_pytorch_at_untraced_batch_sizes(
    exported: tuple[nn.Module, OnnxResult], batch: int
) -> None:
    model, result = exported
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch))
    (actual,) = session.run(["logits"], {"input": x.numpy()})
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    assert actual.shape == (batch, 10)
    assert float(np.max(np.abs(actual - expected))) <= PARITY_TOLERANCE


def test_failed_parity_raises_and_leaves_no_file(tmp_path: Path) -> None:
    case = make_noisy("lenet5")
    sliced = slice_model(case.model, case.x[:2]).model
    path = tmp_path / "model.onnx"
    path.write_bytes(b"stale export from an earlier run")
    with pytest.raises(OnnxParityError, match="tolerance 1e-12"):
        export_onnx(sliced, case.x[:2], path, OnnxConfig(tolerance=1e-12, relative_tolerance=0.0, check_batch_sizes=(64,)))
    assert list(tmp_path.iterdir()) == []


def test_parity_bound_grows_with_the_size_of_the_outputs(tmp_path: Path) -> None:
    # Fine-tuned pruned models can have logits in the hundreds; float32 rounding then exceeds any
    # fixed absolute bound that would still catch a wrong op on ordinary logits.
    case = make_noisy("lenet5")
    sliced = slice_model(case.model, case.x[:2]).model
    last = [module for module in sliced.modules() if isinstance(module, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(1e4)
        last.bias.mul_(1e4)
    config = OnnxConfig(check_batch_sizes=(64,))
    result = export_onnx(sliced, case.x[:2], tmp_path / "big.onnx", config)
    assert result.max_abs_diff > config.tolerance  # the absolute part alone would have refused it
    assert result.max_abs_diff <= config.tolerance + config.relative_tolerance * result.largest_output
    assert result.summary()["largest_output"] == result.largest_output > 1e3
    with pytest.raises(OnnxParityError, match="largest output"):
        export_onnx(sliced, case.x[:2], tmp_path / "strict.onnx", OnnxConfig(relative_tolerance=0.0, check_batch_sizes=(64,)))


def test_torchscript_exporter_fallback(tmp_path: Path) -> None:
    case = make_noisy("mlp1")
    sliced = slice_model(case.model, case.x[:2]).model
    with pytest.warns(DeprecationWarning):
        config = OnnxConfig(dynamo=False, check_batch_sizes=(1, 9))
        result = export_onnx(sliced, case.x[:1], tmp_path / "m.onnx", config)
    assert result.max_abs_diff <= PARITY_TOLERANCE


def test_export_refuses_a_model_that_still_has_noise(tmp_path: Path) -> None:
    case = make_noisy("mlp1")
    with pytest.raises(ValueError, match="fold_noise"):
        export_onnx(case.model, case.x[:2], tmp_path / "m.onnx", OnnxConfig())
    assert list(tmp_path.iterdir()) == []


def test_export_restores_training_mode(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).train()
    export_onnx(model, torch.randn(2, 4), tmp_path / "m.onnx", OnnxConfig(check_batch_sizes=(3,)))
    assert model.training


def test_export_always_checks_a_batch_size_it_did_not_trace(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 2))
    result = export_onnx(model, torch.randn(7, 4), tmp_path / "m.onnx", OnnxConfig(check_batch_sizes=(7,)))
    assert result.checked_batch_sizes == (7, 8)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"opset": 17}, ValueError, "opset >= 18"),
        ({"opset": 18.0}, TypeError, "opset"),
        ({"tolerance": -1.0}, ValueError, "tolerance"),
        ({"tolerance": float("nan")}, ValueError, "tolerance"),
        ({"relative_tolerance": -1e-5}, ValueError, "relative_tolerance"),
        ({"relative_tolerance": "1e-5"}, TypeError, "relative_tolerance"),
        ({"check_batch_sizes": ()}, ValueError, "check_batch_sizes"),
        ({"check_batch_sizes": (1, 0)}, ValueError, "check_batch_sizes"),
        ({"check_batch_sizes": 8}, TypeError, "check_batch_sizes"),
        ({"dynamo": "yes"}, TypeError, "dynamo"),
    ],
)
def test_config_rejects_bad_values(options: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        OnnxConfig(**options)


def test_config_stores_batch_sizes_as_a_tuple() -> None:
    assert OnnxConfig(check_batch_sizes=[2, 3]).check_batch_sizes == (2, 3)  # type: ignore[arg-type]
    assert OnnxConfig(opset=13, dynamo=False).opset == 13


def test_outputs_that_blew_up_are_reported_as_divergence_not_as_a_faulty_export(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        for layer in (model[1], model[3]):
            layer.weight.mul_(1e6)  # as a learning rate of 1e6 leaves them
    with pytest.raises(OnnxParityError, match="training diverged"):
        export_onnx(model, torch.randn(4, 64), tmp_path / "m.onnx", OnnxConfig(relative_tolerance=0.0, check_batch_sizes=(64,)))


@pytest.fixture(scope="module")
def masked_and_exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, nn.Module, Path, Tensor]:
    """A masked noisy LeNet5, its sliced copy, and the copy exported."""
    case = make_noisy("lenet5")
    sliced = slice_model(case.model, case.x[:2]).model
    path = tmp_path_factory.mktemp("verify") / "model.onnx"
    export_onnx(sliced, case.x[:2], path, OnnxConfig(check_batch_sizes=(3,)))
    x = torch.rand(300, 1, 28, 28, generator=torch.Generator().manual_seed(1))  # images in [0, 1], as data
    return case.model, sliced, path, x


def test_data_parity_holds_against_the_masked_model_the_file_stands_for(masked_and_exported) -> None:
    masked, _, path, x = masked_and_exported
    config = OnnxConfig()
    parity = check_data_parity(masked, path, x, config, describe="model.onnx against the masked model")
    assert parity.examples == 300  # in two batches: the bound is judged over all of them
    assert parity.bound == config.tolerance + config.relative_tolerance * parity.largest_output
    assert 0.0 <= parity.max_abs_diff <= parity.bound and parity.largest_output > 0
    assert parity.summary() == {"max_abs_diff": parity.max_abs_diff, "bound": parity.bound,
                                "largest_output": parity.largest_output, "examples": 300}  # fmt: skip
    assert not masked.training


def test_data_parity_refuses_a_file_that_computes_something_else(masked_and_exported) -> None:
    # The exporter's own check compares the file with the module it was given; a reference that
    # differs (here the masked model with one class's logit moved) is only caught end to end.
    masked, _, path, x = masked_and_exported
    shifted = copy.deepcopy(masked)
    with torch.no_grad():
        [module for module in shifted.modules() if isinstance(module, nn.Linear)][-1].bias[3] += 0.01
    with pytest.raises(EndToEndParityError, match="model.onnx against the masked model: the logits differ by 0.01") as caught:
        check_data_parity(shifted, path, x, OnnxConfig(), describe="model.onnx against the masked model")
    assert not caught.value.diverged and "parity bound" in str(caught.value)
    assert isinstance(caught.value, ValueError)  # the CLI's one-line failure, exit 2


def test_onnx_metrics_measure_the_file_on_a_whole_split(masked_and_exported) -> None:
    _, sliced, path, x = masked_and_exported
    with torch.no_grad():
        labels = sliced(x).argmax(1)
    labels[::3] = (labels[::3] + 1) % 10  # a third wrong: an accuracy of exactly 2/3
    split = Split(x, labels)
    measured, expected = onnx_metrics(path, split), classification_metrics(sliced, split)
    assert measured.accuracy == pytest.approx(2 / 3) == expected.accuracy
    assert measured.nll == pytest.approx(expected.nll, rel=1e-5) and measured.ece == pytest.approx(expected.ece, abs=1e-5)

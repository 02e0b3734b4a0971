"""``train.device``: the setting, the refusal where the device is missing, and (on a machine with a
GPU) training, checkpoints and resuming on CUDA with the model handed back where it came from."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from bmrs.devices import available_device, check_device_name, module_device
from bmrs.train import TrainConfig, train_
from bmrs.train.checkpoint import read_checkpoint
from bmrs.train.metrics import classification_metrics
from export.slicing import parameter_compression

from test_train import RESUME_CASES, assert_trees_equal, noisy_lenet, snapshot_every_epoch, synthetic_digits, without_seconds

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU and a CUDA build of torch")


@pytest.mark.parametrize("name", ["cpu", "cuda", "cuda:1"])
def test_device_names_are_accepted_on_any_machine(name):
    assert TrainConfig(device=name).device == name  # a GPU config still loads where there is none


@pytest.mark.parametrize(
    ("value", "error", "named"),
    [(3, TypeError, "train.device must be a device name"), ("gpu", ValueError, "'gpu' is not a device name"),
     ("meta", ValueError, "runs on 'cpu' or 'cuda'")],
)  # fmt: skip
def test_bad_device_names_are_refused_by_name(value, error, named):
    with pytest.raises(error, match=named):
        TrainConfig(device=value)
    with pytest.raises(error, match=named.replace("train.device", "sparsify.device")):
        check_device_name(value, "sparsify.device")


def test_the_device_is_not_part_of_the_recorded_settings():
    # So a checkpoint written on a GPU resumes on the CPU and a cached run matches across devices.
    assert "device" not in TrainConfig(device="cuda").to_dict()
    assert TrainConfig(device="cuda").to_dict() == TrainConfig().to_dict()


def test_a_missing_gpu_is_refused_before_anything_changes():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    model = noisy_lenet(0)
    before = {key: tensor.clone() for key, tensor in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"train.device is 'cuda' but this machine has no CUDA device.*set it to 'cpu'"):
        train_(model, synthetic_digits(64), TrainConfig(epochs=1, finetune_epochs=0, progress=False, device="cuda"))
    assert all(torch.equal(before[key], tensor) for key, tensor in model.state_dict().items())
    with pytest.raises(ValueError, match="no CUDA device"):
        available_device("cuda:0", "sparsify.device")


def test_module_device_of_a_module_without_tensors_is_the_cpu():
    assert module_device(torch.nn.ReLU()) == torch.device("cpu")


@needs_cuda
@pytest.mark.parametrize("case", ["bmrs_n", "grad", "expected"])
def test_training_on_cuda_checkpoints_resumes_and_hands_the_model_back(tmp_path, monkeypatch, case):
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    config, cuts = RESUME_CASES[case]
    config = replace(config, device="cuda")
    data = synthetic_digits()
    snapshot_every_epoch(monkeypatch, tmp_path)
    model = noisy_lenet(0)
    straight = train_(model, data, config, checkpoint_path=tmp_path / "straight.pt")
    assert module_device(model) == torch.device("cpu"), "the model comes back where it was"
    environment = read_checkpoint(tmp_path / "straight.pt").meta["environment"]
    assert environment["device"] == torch.cuda.get_device_name(0)
    assert "cuda_rng" in read_checkpoint(tmp_path / "straight.pt").training
    expected = read_checkpoint(tmp_path / "straight.pt")
    for cut in cuts:
        resumed_model = noisy_lenet(7)
        resumed = train_(resumed_model, data, config, checkpoint_path=tmp_path / f"resumed{cut}.pt", resume_from=tmp_path / f"epoch{cut}.pt")
        assert without_seconds(resumed.history) == without_seconds(straight.history), f"cut {cut}"
        assert_trees_equal(read_checkpoint(tmp_path / f"resumed{cut}.pt").state_dict, expected.state_dict, f"cut {cut}")
    # The checkpoint is read onto the CPU: a GPU run's model ships from a CPU machine too.
    assert all(t.device.type == "cpu" for t in expected.state_dict.values())
    cpu_metrics = classification_metrics(model, data.val)
    on_gpu = classification_metrics(model.to("cuda"), data.val)
    assert on_gpu.accuracy == pytest.approx(cpu_metrics.accuracy, abs=1 / len(data.val))
    assert parameter_compression(model, data.test.images[:2]) == pytest.approx(parameter_compression(model.cpu(), data.test.images[:2]))

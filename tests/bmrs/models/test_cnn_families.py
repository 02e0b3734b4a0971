"""The real architectures (CIFAR ResNet, torchvision ResNets and MobileNetV2) and weights from a file."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from bmrs.models import (
    MODELS,
    CifarResNet,
    ModelConfig,
    NoiseInit,
    build_model,
    build_network,
    load_weights,
)

NEW_FAMILIES = ["resnet20", "resnet18", "resnet34", "resnet50", "mobilenet_v2"]
TORCHVISION_BUILDERS = {
    "resnet18": torchvision.models.resnet18, "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50, "mobilenet_v2": torchvision.models.mobilenet_v2,
}  # fmt: skip


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


@pytest.mark.parametrize("input_shape", [(1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("name", NEW_FAMILIES)
def test_builds_and_classifies_small_images(name, input_shape):
    assert name in MODELS
    model = build_model(name, input_shape, 10).eval()
    with torch.no_grad():
        assert model(torch.rand(2, *input_shape)).shape == (2, 10)


def test_resnet20_is_the_papers_cifar_resnet():
    model = build_model("resnet20", (3, 32, 32), 10)
    assert isinstance(model, CifarResNet)
    assert 260_000 <= count_parameters(model) <= 280_000  # He et al. 2016, table 6: 0.27M
    assert model.stem[0].kernel_size == (3, 3) and model.stem[0].out_channels == 16
    for stage, width in zip((model.layer1, model.layer2, model.layer3), (16, 32, 64)):
        assert len(stage) == 3
        assert all(block.conv2.out_channels == width for block in stage)
    assert isinstance(model.layer1[0].shortcut, nn.Identity)
    # option B: a shape change goes through a strided 1x1 conv + BatchNorm
    for stage in (model.layer2, model.layer3):
        conv, norm = stage[0].shortcut
        assert conv.kernel_size == (1, 1) and conv.stride == (2, 2) and isinstance(norm, nn.BatchNorm2d)
        assert stage[0].conv1.stride == (2, 2)
        assert all(isinstance(block.shortcut, nn.Identity) for block in stage[1:])
    assert model.fc.in_features == 64 and model.fc.out_features == 10


def test_resnet20_depth_and_input_size():
    deeper = build_network(ModelConfig(name="resnet20", depth=32), (1, 8, 8), 4).eval()
    assert [len(stage) for stage in (deeper.layer1, deeper.layer2, deeper.layer3)] == [5, 5, 5]
    with torch.no_grad():
        assert deeper(torch.rand(2, 1, 8, 8)).shape == (2, 4)
    assert ModelConfig(name="resnet20", depth=32).options() == {"depth": 32}
    assert ModelConfig(name="resnet20").options() == {}
    for depth in (21, 2, 0, True, "20"):
        with pytest.raises(ValueError, match=r"depth must be 6n\+2.*20, 32, 44, 56"):
            ModelConfig(name="resnet20", depth=depth)
    with pytest.raises(ValueError, match=r"got 21"):
        build_model("resnet20", (3, 32, 32), 10, depth=21)
    with pytest.raises(ValueError, match=r"depth applies to the resnet20 only, not to 'resnet18'.*model.depth=null"):
        ModelConfig(name="resnet18", depth=20)
    with pytest.raises(ValueError, match=r"widths applies to the lenet5 only, not to 'resnet20'"):
        ModelConfig(name="resnet20", widths=(6, 16, 120, 84))
    with pytest.raises(ValueError, match=r"at least 8x8 pixels, got 4x32"):
        build_model("resnet20", (3, 4, 32), 10)
    for name in NEW_FAMILIES:
        with pytest.raises(ValueError, match=r"images shaped \(channels, height, width\), got input_shape \(784,\)"):
            build_model(name, (784,), 10)


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_small_images_get_the_cifar_resnet_stem(name):
    model = build_model(name, (1, 28, 28), 10)
    assert model.conv1.in_channels == 1
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.padding == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert model.fc.out_features == 10


def test_large_images_keep_the_imagenet_stem():
    model = build_model("resnet18", (3, 224, 224), 10)
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2) and model.conv1.in_channels == 3
    assert isinstance(model.maxpool, nn.MaxPool2d)
    grey = build_model("resnet18", (1, 224, 224), 10)
    assert grey.conv1.kernel_size == (7, 7) and grey.conv1.stride == (2, 2) and grey.conv1.in_channels == 1
    # one small side is enough for the small-image stem
    assert build_model("resnet18", (3, 32, 224), 10).conv1.kernel_size == (3, 3)


def test_mobilenet_v2_first_conv_follows_the_data():
    small = build_model("mobilenet_v2", (1, 28, 28), 10)
    assert small.features[0][0].in_channels == 1 and small.features[0][0].stride == (1, 1)
    assert small.classifier[1].out_features == 10
    large = build_model("mobilenet_v2", (3, 224, 224), 10)
    assert large.features[0][0].in_channels == 3 and large.features[0][0].stride == (2, 2)


@pytest.mark.parametrize("name", sorted(TORCHVISION_BUILDERS))
def test_module_paths_are_torchvisions(name):
    """A state dict of torchvision's own model (same input and classes) loads: same keys, same shapes."""
    ours = build_model(name, (3, 224, 224), 10).state_dict()
    theirs = TORCHVISION_BUILDERS[name](weights=None, num_classes=10).state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[key].shape == theirs[key].shape for key in ours)
    small = build_model(name, (3, 32, 32), 10).state_dict()
    assert list(small) == list(theirs)  # the CIFAR stem changes shapes, never names


def test_torchvisions_own_state_dict_loads(tmp_path):
    theirs = torchvision.models.mobilenet_v2(weights=None, num_classes=10)
    torch.save(theirs.state_dict(), tmp_path / "mobilenet_v2.pt")
    ours = load_weights(build_model("mobilenet_v2", (3, 224, 224), 10), str(tmp_path / "mobilenet_v2.pt"))
    assert torch.equal(ours.features[0][0].weight, theirs.features[0][0].weight)
    assert torch.equal(ours.classifier[1].weight, theirs.classifier[1].weight)


# ------------------------------------------------------------------------ weights from a file


def _train_step_changes_buffers(model: nn.Module, input_shape) -> None:
    """One training-mode forward, so BatchNorm running statistics differ from their initial values."""
    model.train()
    with torch.no_grad():
        model(torch.rand(4, *input_shape))


@pytest.mark.parametrize("name, input_shape", [
    ("resnet20", (1, 28, 28)), ("resnet18", (3, 32, 32)), ("mobilenet_v2", (1, 28, 28)),
    ("lenet5", (1, 28, 28)), ("mlp", (1, 28, 28)),
])  # fmt: skip
def test_weights_round_trip(tmp_path, name, input_shape):
    saved = build_network(ModelConfig(name=name), input_shape, 10, seed=1)
    _train_step_changes_buffers(saved, input_shape)
    path = tmp_path / f"{name}.pt"
    torch.save(saved.state_dict(), path)
    fresh = build_network(ModelConfig(name=name), input_shape, 10, seed=0).state_dict()
    loaded = build_network(ModelConfig(name=name, weights=str(path)), input_shape, 10, seed=0).state_dict()
    expected = saved.state_dict()
    assert list(loaded) == list(expected)
    assert all(torch.equal(loaded[key], expected[key]) for key in expected)
    assert not all(torch.equal(fresh[key], expected[key]) for key in expected)  # the file, not the seed


def test_weights_are_loaded_before_the_noise(tmp_path):
    saved = build_network(ModelConfig(name="lenet5"), (1, 28, 28), 10, seed=3)
    path = tmp_path / "lenet5.pt"
    torch.save(saved.state_dict(), path)
    noisy = build_network(ModelConfig(name="lenet5", weights=path), (1, 28, 28), 10, noise=NoiseInit())
    assert torch.equal(noisy.features[0].weight, saved.features[0].weight)
    assert torch.equal(noisy.classifier[-1].weight, saved.classifier[-1].weight)


def test_weights_of_a_user_model(tmp_path, monkeypatch):
    (tmp_path / "weights_user_xyz.py").write_text(
        "from torch import nn\n"
        "def make(input_shape, num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0] * input_shape[1] * input_shape[2], num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    config = ModelConfig(name="weights_user_xyz:make")
    saved = build_network(config, (1, 4, 4), 3, seed=5)
    torch.save(saved.state_dict(), tmp_path / "user.pt")
    loaded = build_network(ModelConfig(name=config.name, weights=str(tmp_path / "user.pt")), (1, 4, 4), 3)
    assert torch.equal(loaded[1].weight, saved[1].weight)


def test_weights_setting_is_checked():
    assert ModelConfig(weights=Path("a/b.pt")).weights == "a/b.pt"
    assert ModelConfig(name="mlp", weights="w.pt").weights == "w.pt"
    with pytest.raises(TypeError, match="weights must be the path of a state dict file.*got 3"):
        ModelConfig(weights=3)
    with pytest.raises(ValueError, match="weights is an empty path"):
        ModelConfig(weights="")


def _fails_naming(path: Path, fragment: str, **build) -> None:
    config = ModelConfig(name=build.pop("name", "resnet20"), weights=str(path))
    with pytest.raises(ValueError, match=re.escape(repr(str(path))) + ".*" + fragment) as error:
        build_network(config, build.pop("input_shape", (1, 28, 28)), build.pop("num_classes", 10))
    assert "\n" not in str(error.value)


def test_bad_weights_files_name_the_path_and_the_fix(tmp_path):
    _fails_naming(tmp_path / "missing.pt", r"no such file.*torch.save\(model.state_dict\(\), path\)")
    _fails_naming(tmp_path, "no such file")  # a folder is not a state dict file either
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01 not a torch file \xff" * 10)
    _fails_naming(garbage, r"is not a readable state dict \(not a torch.save file of tensors.*torch.save\(model.state_dict\(\), path\)")
    whole_model = tmp_path / "whole.pt"
    torch.save(build_model("lenet5", (1, 28, 28), 10), whole_model)  # the model pickled, not its state dict
    _fails_naming(whole_model, r"is not a readable state dict \(it pickles a .*LeNet5, not tensors only", name="lenet5")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    _fails_naming(empty, "empty or cut short")
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], listed)
    _fails_naming(listed, r"holds a list, not a state dict")
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"model": build_model("lenet5", (1, 28, 28), 10).state_dict(), "epoch": 3}, checkpoint)
    _fails_naming(checkpoint, r"holds a mapping with keys \['epoch', 'model'\], not a state dict.*checkpoint", name="lenet5")


def test_weights_of_another_shape_name_the_mismatch(tmp_path):
    ten_classes = tmp_path / "ten.pt"
    torch.save(build_model("resnet20", (1, 28, 28), 10).state_dict(), ten_classes)
    _fails_naming(
        ten_classes, r"do not fit 'resnet20'.*fc.weight \(10, 64\) vs \(5, 64\).*classifier fc.weight has 10 classes "
        r"in the file, 5 here.*same input shape and number of classes", num_classes=5,
    )  # fmt: skip
    _fails_naming(ten_classes, r"stem.0.weight \(16, 1, 3, 3\) vs \(16, 3, 3, 3\).*takes 1 inputs in the file, 3 here \(another channel count", input_shape=(3, 32, 32))
    _fails_naming(ten_classes, r"missing keys \(conv1.weight, bn1.weight, bn1.bias, \.\.\.\).*unexpected keys", name="resnet18")
    deeper = tmp_path / "resnet32.pt"
    torch.save(build_model("resnet20", (1, 28, 28), 10, depth=32).state_dict(), deeper)
    _fails_naming(deeper, r"unexpected keys \(layer1.3")

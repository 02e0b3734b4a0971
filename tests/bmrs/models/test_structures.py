"""Which layers can carry noise, where it goes, and the errors that say what the user can do."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from bmrs.models import ModelConfig, NoiseInit, build_network
from bmrs.nn.noise import noise_modules
from bmrs.models.structures import analyse_structures
from layer_patterns import build_pattern


def verdicts(name: str) -> dict[str, tuple[str | None, str | None]]:
    model, shape = build_pattern(name, seed=0)
    found = analyse_structures(model, torch.randn(2, *shape))
    return {path: (v.point.after if v.point else None, v.reason) for path, v in found.verdicts.items()}


def test_noise_goes_on_the_batchnorm_output_of_a_conv_that_feeds_one():
    found = verdicts("conv_bn_relu_pool")
    assert found["0"][0] == "1" and found["4"][0] == "5"
    assert "outputs are the model's outputs" in found["9"][1]


def test_linear_feeding_batchnorm1d_is_noised_after_it_and_layernorm_is_refused():
    found = verdicts("linear_bn1d_layernorm")
    assert found["net.1"][0] == "net.2"
    assert found["net.4"][0] is None and "LayerNorm that follows" in found["net.4"][1]


def test_activation_with_nonzero_value_at_zero_is_refused_with_the_reason():
    found = verdicts("conv_bn_sigmoid")
    assert found["0"] == (None, found["0"][1]) and "sigmoid(0) = 0.5" in found["0"][1]


def test_coupled_layers_carry_noise_as_one_group_after_their_batchnorms():
    model, shape = build_pattern("resnet_blocks", seed=0)
    found = analyse_structures(model, torch.randn(2, *shape))
    stream = ("stem", "block1.conv2", "block2.conv2")  # every producer of the residual stream
    assert {path: found.verdicts[path].point.after for path in stream} == {"stem": "bn", "block1.conv2": "block1.bn2", "block2.conv2": "block2.bn2"}
    assert all(found.verdicts[path].point.group == "stem" and found.verdicts[path].coupled == stream for path in stream)
    assert found.verdicts["block1.conv1"].point.group is None and found.verdicts["block1.conv1"].point.after == "block1.bn1"
    assert found.groups() == {"stem": stream}
    stack = analyse_structures(*(lambda m, s: (m, torch.randn(2, *s)))(*build_pattern("pointwise_stack", seed=0)))
    assert stack.groups() == {"0": ("0", "3")}  # a depthwise conv and its producer
    assert stack.verdicts["6"].point.after == "7" and stack.verdicts["6"].point.group is None


def test_a_group_with_a_member_that_cannot_carry_noise_carries_none_and_says_why():
    transformer = verdicts("transformer_block")
    for path in ("embed", "fc2"):  # the residual stream: the LayerNorms mix its features
        assert transformer[path][0] is None
        assert "coupled with ['embed', 'fc2']" in transformer[path][1]
        assert "'embed' cannot carry noise (its outputs are normalised together by the LayerNorm" in transformer[path][1]


def test_transformer_linear_noise_acts_on_the_feature_axis_and_unreachable_layers_are_refused():
    model, shape = build_pattern("transformer_block", seed=0)
    found = analyse_structures(model, torch.randn(2, *shape))
    assert found.carriers() == ["fc1"]
    assert found.verdicts["fc1"].point.dim == -1
    assert "never called as a module" in found.verdicts["attn.out_proj"].reason
    assert "coupled with ['embed', 'fc2']" in found.verdicts["fc2"].reason


def test_explicit_points_list_every_refused_layer_and_the_layers_that_can_carry_noise():
    model, shape = build_pattern("resnet_blocks", seed=0)
    found = analyse_structures(model, torch.randn(2, *shape))
    with pytest.raises(ValueError) as info:
        found.points_for(["stem", "block1.conv1", "fc"])
    message = str(info.value)
    assert "'fc' cannot carry noise: its outputs are the model's outputs" in message
    assert message.endswith(
        "Layers of this model that can carry noise: ['stem', 'block1.conv1', 'block1.conv2', 'block2.conv1', 'block2.conv2']"
    )
    with pytest.raises(ValueError, match=r"'stem' is coupled with \['stem', 'block1.conv2', 'block2.conv2'\].*add \['block1.conv2', 'block2.conv2'\]"):
        found.points_for(["stem", "block1.conv1"])
    points = found.points_for(["block2.conv2", "stem", "block1.conv2"])
    assert [(point.source, point.group) for point in points] == [("stem", "stem"), ("block1.conv2", "stem"), ("block2.conv2", "stem")]


def test_a_user_model_gets_noise_only_where_it_slices_exactly(tmp_path, monkeypatch):
    (tmp_path / "struct_models_xyz.py").write_text(
        "from layer_patterns import TinyResNet\n\ndef make():\n    return TinyResNet()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_network(ModelConfig("struct_models_xyz:make"), (3, 8, 8), 5, noise=NoiseInit(), seed=0)
    groups = {path: noise.group for path, noise in noise_modules(model).items()}
    assert groups == {"bn.noise": "stem", "block1.bn1.noise": None, "block1.bn2.noise": "stem", "block2.bn1.noise": None, "block2.bn2.noise": "stem"}
    with pytest.raises(ValueError, match=r"'block1.conv2' is coupled with .*add \['stem', 'block2.conv2'\]"):
        build_network(ModelConfig("struct_models_xyz:make", noise_points=("block1.conv2",)), (3, 8, 8), 5, noise=NoiseInit(), seed=0)
    # Sparing the input layer spares its whole group: the stem's channels are the stream's.
    spared = build_network(ModelConfig("struct_models_xyz:make", noise_on_first_layer=False), (3, 8, 8), 5, noise=NoiseInit(), seed=0)
    assert sorted(noise_modules(spared)) == ["block1.bn1.noise", "block2.bn1.noise"]


def test_a_model_with_no_layer_that_can_carry_noise_says_why():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(ValueError, match="no layer of this model can carry noise .*outputs are the model's outputs"):
        analyse_structures(model, torch.randn(2, 4)).default_points()

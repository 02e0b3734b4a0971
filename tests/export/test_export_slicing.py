from __future__ import annotations

import pytest
import torch
from torch import nn

from bmrs.models import build_model, insert_noise, noise_points_for
from bmrs.nn.noise import noise_modules
from bmrs.nn.fold import fold_noise
from export.slicing import (
    count_flops,
    count_params,
    parameter_compression,
    slice_,
    slice_model,
    surviving_widths,
)
from export_cases import INPUT_SHAPE, NUM_CLASSES, NoisyCase, make_noisy


def test_sliced_model_computes_the_masked_model(noisy: NoisyCase) -> None:
    result = slice_model(noisy.model, noisy.x[:2])
    with torch.no_grad():
        assert float((result.model.eval()(noisy.x) - noisy.model(noisy.x)).abs().max()) <= 1e-5


def test_sliced_model_has_the_surviving_widths_and_fewer_parameters(noisy: NoisyCase) -> None:
    result = slice_model(noisy.model, noisy.x[:2])
    expected = {path: int(mask.sum()) for path, mask in noisy.keep.items()}
    assert {path: result.widths[path] for path in expected} == expected
    assert result.widths == surviving_widths(result.model)
    last = list(result.widths)[-1]
    assert result.widths[last] == NUM_CLASSES
    assert result.pruned_params == count_params(result.model) < result.dense_params
    assert 0 < result.pruned_flops < result.dense_flops
    assert result.compression == pytest.approx(1 - result.pruned_params / result.dense_params)


def test_lenet5_slicing_removes_the_flattened_columns_of_pruned_filters() -> None:
    case = make_noisy("lenet5")
    result = slice_model(case.model, case.x[:2])
    conv2 = result.widths["features.3"]
    assert result.model.features[3].in_channels == result.widths["features.0"]
    assert result.model.classifier[1].in_features == conv2 * 5 * 5
    assert result.model.classifier[3].in_features == result.widths["classifier.1"]


def _mlp_params(widths: list[int]) -> int:
    return sum(fan_in * fan_out + fan_out for fan_in, fan_out in zip(widths, widths[1:]))


@pytest.mark.parametrize("case", ["mlp1", "mlp3"])
def test_mlp_compression_matches_the_arithmetic(case: str) -> None:
    noisy = make_noisy(case)
    hidden = [int(mask.sum()) for mask in noisy.keep.values()]
    dense_hidden = [150] * len(hidden)
    dense = _mlp_params([784, *dense_hidden, 10])
    pruned = _mlp_params([784, *hidden, 10])
    if case == "mlp1":
        # Spelled out once: 784*150 + 150 + 150*10 + 10 weights and biases.
        assert dense == 119_260
        assert pruned == 784 * hidden[0] + hidden[0] + hidden[0] * 10 + 10
    assert parameter_compression(noisy.model, noisy.x[:1]) == pytest.approx(1 - pruned / dense, abs=1e-12)
    result = slice_model(noisy.model, noisy.x[:1])
    assert (result.dense_params, result.pruned_params) == (dense, pruned)


def test_mlp_flops_are_macs_per_example() -> None:
    noisy = make_noisy("mlp1")
    k = int(next(iter(noisy.keep.values())).sum())
    # torch-pruning: in*out MACs + out bias adds per Linear, one op per ReLU element.
    expected = lambda width: 784 * width + width + width + width * 10 + 10  # noqa: E731
    result = slice_model(noisy.model, noisy.x)
    assert result.dense_flops == expected(150)
    assert result.pruned_flops == expected(k)
    # The count is per example whatever the batch size.
    assert count_flops(result.model, noisy.x[:1]) == count_flops(result.model, noisy.x) == expected(k)


def test_slice_leaves_its_input_untouched() -> None:
    noisy = make_noisy("lenet5")
    dense, keep = fold_noise(noisy.model)
    widths = surviving_widths(dense)
    sliced = slice_(dense, keep, noisy.x[:2])
    assert surviving_widths(dense) == widths
    assert count_params(sliced) < count_params(dense)


def test_a_fully_pruned_layer_keeps_one_zero_structure() -> None:
    torch.manual_seed(0)
    model = build_model("mlp", INPUT_SHAPE, NUM_CLASSES, hidden_layers=2, hidden_width=8)
    insert_noise(model, noise_points_for("mlp", model), init_mu=-0.5, init_log_sigma=-2.0)
    first = noise_modules(model)["1.noise"]
    first.prune_(torch.ones(8, dtype=torch.bool))
    model.eval()
    x = torch.randn(4, *INPUT_SHAPE)
    with pytest.warns(UserWarning, match="every structure"):
        result = slice_model(model, x)
    assert result.widths["1"] == 1
    with torch.no_grad():
        assert float((result.model(x) - model(x)).abs().max()) <= 1e-6


@pytest.fixture
def dense_lenet() -> nn.Module:
    return build_model("lenet5", INPUT_SHAPE, NUM_CLASSES)


def test_slice_rejects_unknown_layers(dense_lenet: nn.Module) -> None:
    with pytest.raises(ValueError, match="features.9"):
        slice_(dense_lenet, {"features.9": torch.ones(6, dtype=torch.bool)}, torch.randn(1, *INPUT_SHAPE))


def test_slice_rejects_a_mask_of_the_wrong_size(dense_lenet: nn.Module) -> None:
    with pytest.raises(ValueError, match="6 outputs"):
        slice_(dense_lenet, {"features.0": torch.ones(5, dtype=torch.bool)}, torch.randn(1, *INPUT_SHAPE))


def test_slice_rejects_a_non_bool_mask(dense_lenet: nn.Module) -> None:
    with pytest.raises(TypeError, match="bool"):
        slice_(dense_lenet, {"features.0": torch.ones(6)}, torch.randn(1, *INPUT_SHAPE))


def test_slice_rejects_removing_every_output(dense_lenet: nn.Module) -> None:
    with pytest.raises(ValueError, match="at least one"):
        slice_(dense_lenet, {"features.0": torch.zeros(6, dtype=torch.bool)}, torch.randn(1, *INPUT_SHAPE))


def test_slice_rejects_a_non_sliceable_layer(dense_lenet: nn.Module) -> None:
    with pytest.raises(TypeError, match="MaxPool2d"):
        slice_(dense_lenet, {"features.2": torch.ones(6, dtype=torch.bool)}, torch.randn(1, *INPUT_SHAPE))


def test_slice_refuses_coupled_layers_with_separate_masks() -> None:
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 6)
            self.b = nn.Linear(4, 6)
            self.head = nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.a(x) + self.b(x))

    keep_a = torch.tensor([True, False, True, True, True, True])
    keep_b = torch.tensor([True, True, True, False, True, True])
    with pytest.raises(ValueError, match="coupled"):
        slice_(Residual(), {"a": keep_a, "b": keep_b}, torch.randn(2, 4))


class _Summed(nn.Module):
    """Two Linear layers whose outputs are added: their output structures are coupled."""

    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Linear(4, 6)
        self.right = nn.Linear(4, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(torch.relu(self.left(x) + self.right(x)))


def test_check_sliceable_refuses_coupled_noise_points_before_training():
    from bmrs.models import every_hidden_layer, insert_noise
    from export.slicing import check_sliceable

    model = insert_noise(_Summed(), every_hidden_layer(_Summed()))
    with pytest.raises(ValueError, match="coupled"):
        check_sliceable(model, torch.rand(3, 4))


def test_check_sliceable_accepts_lenet5_and_leaves_it_untouched():
    from bmrs.models import build_model, insert_noise, noise_points_for
    from export.slicing import check_sliceable

    model = build_model("lenet5", (1, 28, 28), 10)
    insert_noise(model, noise_points_for("lenet5", model))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    check_sliceable(model, torch.rand(2, 1, 28, 28))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

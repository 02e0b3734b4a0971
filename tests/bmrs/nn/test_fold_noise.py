from __future__ import annotations

import pytest
import torch
from torch import nn

from bmrs.models import Noised, build_model, insert_noise, NoisePoint
from bmrs.nn.noise import LogNormalNoise, noise_modules
from bmrs.nn.fold import fold_noise

from export_cases import INPUT_SHAPE, NUM_CLASSES, NoisyCase, make_noisy


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def test_folded_model_computes_the_noisy_evaluation_output(noisy: NoisyCase) -> None:
    folded, _ = fold_noise(noisy.model)
    with torch.no_grad():
        assert _max_diff(folded.eval()(noisy.x), noisy.model(noisy.x)) <= 1e-5


def test_folded_model_has_no_noise_and_reports_every_keep_mask(noisy: NoisyCase) -> None:
    folded, keep = fold_noise(noisy.model)
    assert not any(isinstance(m, (Noised, LogNormalNoise)) for m in folded.modules())
    assert sorted(keep) == sorted(noisy.keep)
    for path, mask in keep.items():
        assert mask.dtype == torch.bool
        assert torch.equal(mask, noisy.keep[path])
        assert isinstance(folded.get_submodule(path), (nn.Linear, nn.Conv2d))


def test_pruned_rows_fold_to_exact_zeros(noisy: NoisyCase) -> None:
    folded, keep = fold_noise(noisy.model)
    for path, mask in keep.items():
        layer = folded.get_submodule(path)
        assert torch.count_nonzero(layer.weight[~mask]) == 0
        assert torch.count_nonzero(layer.bias[~mask]) == 0


def test_lenet5_keep_masks_name_the_convs_not_the_pools() -> None:
    case = make_noisy("lenet5")
    _, keep = fold_noise(case.model)
    assert sorted(keep) == ["classifier.1", "classifier.3", "features.0", "features.3"]


def test_fold_leaves_the_input_model_untouched(noisy: NoisyCase) -> None:
    before = {k: v.clone() for k, v in noisy.model.state_dict().items()}
    fold_noise(noisy.model)
    after = noisy.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert noise_modules(noisy.model)


@pytest.mark.parametrize("family", ["lenet5", "mlp"])
def test_model_without_noise_folds_to_an_identical_copy(family: str) -> None:
    torch.manual_seed(0)
    model = build_model(family, INPUT_SHAPE, NUM_CLASSES).eval()
    folded, keep = fold_noise(model)
    assert keep == {}
    assert folded is not model
    assert str(folded) == str(model)
    original = model.state_dict()
    for name, tensor in folded.state_dict().items():
        assert torch.equal(tensor, original[name]) and tensor.data_ptr() != original[name].data_ptr()
    x = torch.randn(4, *INPUT_SHAPE)
    with torch.no_grad():
        assert torch.equal(folded(x), model(x))


def test_noise_behind_a_non_commuting_module_is_refused() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Sigmoid(), nn.Linear(3, 2))
    insert_noise(model, [NoisePoint(after="1", source="0", channels=3)])
    with pytest.raises(ValueError, match="Sigmoid"):
        fold_noise(model)


def test_noise_after_relu_folds_into_the_linear_before_it() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    insert_noise(model, [NoisePoint(after="1", source="0", channels=3)], init_mu=-0.5, init_log_sigma=-1.0)
    model.eval()
    folded, keep = fold_noise(model)
    assert list(keep) == ["0"]
    x = torch.randn(5, 4)
    with torch.no_grad():
        assert _max_diff(folded(x), model(x)) <= 1e-6


def test_noise_without_a_recorded_source_is_refused() -> None:
    model = nn.Sequential(Noised(nn.Linear(4, 3), LogNormalNoise(3)), nn.Linear(3, 2))
    with pytest.raises(ValueError, match="insert_noise"):
        fold_noise(model)


def test_fold_rejects_a_non_module() -> None:
    with pytest.raises(TypeError, match="nn.Module"):
        fold_noise("model")  # type: ignore[arg-type]

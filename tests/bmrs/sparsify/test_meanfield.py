"""Mean-field layers: the posterior mean is the dense layer, the sampled output has the moments of
sampled weights, the KL is the closed form, masks remove weights, and the converters round-trip."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bmrs.math.gaussian_reduction import delta_f_gaussian_spike
from bmrs.sparsify import (
    MeanFieldConv2d, MeanFieldLinear, bmr_prune_, convertible_layers, meanfield_layers, to_dense, to_meanfield,
    weight_sparsity,
)  # fmt: skip


def randomise_posterior_(layer, seed: int) -> None:
    """Posterior stds of very different sizes, so that a wrong variance formula shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in ("weight_log_std", "bias_log_std"):
            parameter = getattr(layer, name)
            if parameter is not None:
                parameter.copy_(torch.empty_like(parameter).uniform_(math.log(0.02), math.log(0.5), generator=generator))


def conv_cases():
    return {
        "grouped_strided_reflect": (nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, padding_mode="reflect"), (2, 4, 5, 5)),
        "depthwise_dilated": (nn.Conv2d(3, 3, 3, padding=2, dilation=2, groups=3), (2, 3, 5, 5)),
        "same_no_bias": (nn.Conv2d(2, 4, (3, 1), padding="same", bias=False), (1, 2, 4, 4)),
    }


def layer_cases():
    torch.manual_seed(0)
    cases = {"linear": (nn.Linear(6, 4), (3, 6))}
    cases.update(conv_cases())
    return cases


@pytest.mark.parametrize("case", sorted(layer_cases()))
def test_eval_forward_is_the_dense_layer(case) -> None:
    dense, shape = layer_cases()[case]
    layer = to_meanfield(dense, init_std=0.3).eval()
    assert isinstance(layer, MeanFieldLinear if isinstance(dense, nn.Linear) else MeanFieldConv2d)
    x = torch.randn(shape)
    assert torch.equal(layer(x), dense(x))
    assert torch.equal(layer(x), layer(x))  # no sampling in evaluation mode


def sampled_weight_outputs(layer, x: torch.Tensor, draws: int, seed: int) -> torch.Tensor:
    """Outputs of the dense layer with weights drawn from the posterior, one draw per row."""
    generator = torch.Generator().manual_seed(seed)
    dense = layer.to_dense()
    outputs = []
    with torch.no_grad():
        for _ in range(draws):
            noise = torch.randn(layer.weight_mean.shape, generator=generator, dtype=layer.weight_mean.dtype)
            dense.weight.copy_((layer.weight_mean + layer.weight_log_std.exp() * noise) * layer.weight_mask)
            if layer.bias_mean is not None:
                noise = torch.randn(layer.bias_mean.shape, generator=generator, dtype=layer.bias_mean.dtype)
                dense.bias.copy_(layer.bias_mean + layer.bias_log_std.exp() * noise)
            outputs.append(dense(x))
    return torch.stack(outputs)


def assert_moments(samples: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> None:
    """Sample mean within 5 standard errors, sample variance within 5 of its own (a Gaussian's
    variance estimate has standard error ``var * sqrt(2 / (n - 1))``)."""
    n = samples.shape[0]
    assert ((samples.mean(0) - mean).abs() <= 5 * (var / n).sqrt()).all()
    assert ((samples.var(0) - var).abs() <= 5 * var * math.sqrt(2 / (n - 1))).all()


@pytest.mark.parametrize("case", sorted(layer_cases()))
def test_training_output_has_the_moments_of_sampled_weights(case) -> None:
    dense, shape = layer_cases()[case]
    layer = to_meanfield(dense.double())
    randomise_posterior_(layer, seed=1)
    generator = torch.Generator().manual_seed(2)
    layer.prune_(torch.rand(layer.weight_mask.shape, generator=generator) < 0.3)
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        mean, var = layer.output_moments(x)
        # The closed form the local reparameterisation samples from, against weights actually drawn.
        assert_moments(sampled_weight_outputs(layer, x, draws=3000, seed=3), mean, var)
        # And what training mode draws: one independent output per example.
        torch.manual_seed(4)
        draws = 3000
        sampled = layer.train()(x.repeat(draws, *([1] * (x.dim() - 1))))
        assert_moments(sampled.reshape(draws, *mean.shape), mean, var)


def test_kl_is_the_closed_form_over_kept_weights_and_biases() -> None:
    torch.manual_seed(0)
    layer = to_meanfield(nn.Linear(5, 3).double(), prior_std=0.3)
    randomise_posterior_(layer, seed=5)
    pruned = torch.zeros(3, 5, dtype=torch.bool)
    pruned[0, :2] = pruned[2, 4] = True
    layer.prune_(pruned)
    draws = 200_000
    generator = torch.Generator().manual_seed(6)
    total_mean = total_var = 0.0
    for mean, log_std, keep in ((layer.weight_mean, layer.weight_log_std, layer.weight_mask), (layer.bias_mean, layer.bias_log_std, None)):
        mean, std = mean.detach(), log_std.detach().exp()
        w = mean + std * torch.randn(draws, *mean.shape, generator=generator, dtype=torch.float64)
        log_ratio = torch.distributions.Normal(mean, std).log_prob(w) - torch.distributions.Normal(torch.zeros_like(mean), torch.full_like(mean, 0.3)).log_prob(w)
        keep = torch.ones_like(mean, dtype=torch.bool) if keep is None else keep
        total_mean += float(log_ratio.mean(0)[keep].sum())
        total_var += float((log_ratio.var(0)[keep] / draws).sum())
    assert abs(float(layer.kl().detach()) - total_mean) <= 5 * math.sqrt(total_var)


def test_masks_remove_weights_from_mean_variance_and_kl() -> None:
    torch.manual_seed(0)
    dense = nn.Linear(4, 3)
    layer = to_meanfield(dense)
    randomise_posterior_(layer, seed=7)
    prune = torch.tensor([[True, False, False, True], [False] * 4, [False, True, False, False]])
    assert layer.prune_(prune) == 3
    assert layer.prune_(prune | torch.eye(3, 4, dtype=torch.bool)) == 2  # only the new ones count
    kept = ~(prune | torch.eye(3, 4, dtype=torch.bool))
    assert torch.equal(layer.weight_mask, kept)
    assert torch.equal(layer.weight_mean[~kept], torch.zeros(int((~kept).sum())))
    x = torch.randn(5, 4)
    zeroed = nn.Linear(4, 3)
    with torch.no_grad():
        zeroed.weight.copy_(dense.weight * kept)
        zeroed.bias.copy_(dense.bias)
    assert torch.equal(layer.eval()(x), zeroed(x))
    reference = to_meanfield(zeroed)
    with torch.no_grad():
        reference.weight_log_std.copy_(torch.where(kept, layer.weight_log_std, -torch.inf))  # no variance where pruned
        reference.bias_log_std.copy_(layer.bias_log_std)
    assert torch.allclose(layer.output_moments(x)[1], reference.output_moments(x)[1], rtol=1e-6)
    assert layer.num_alive == int(kept.sum()) and layer.num_weights == 12
    with pytest.raises(ValueError, match="bool tensor of shape"):
        layer.prune_(torch.zeros(4, 3, dtype=torch.bool))


def test_pruned_weights_get_no_gradient_and_kl_ignores_their_parameters() -> None:
    layer = to_meanfield(nn.Linear(3, 2))
    layer.prune_(torch.tensor([[True, False, False], [False, False, True]]))
    before = layer.kl()
    with torch.no_grad():
        layer.weight_log_std[0, 0] = 5.0  # a pruned weight's std: irrelevant
    assert torch.equal(layer.kl(), before)
    layer.train()(torch.randn(4, 3)).sum().add(layer.kl()).backward()
    assert torch.equal(layer.weight_mean.grad[~layer.weight_mask], torch.zeros(2))
    assert torch.equal(layer.weight_log_std.grad[~layer.weight_mask], torch.zeros(2))


class WithAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(4, 2, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.attention(x, x, x, need_weights=False)[0].mean(1))


def test_converters_round_trip_a_model_and_skip_multihead_attention() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=4), nn.Flatten(), nn.Linear(16, 3)
    ).eval()
    meanfield = to_meanfield(model, prior_std=0.2, output_prior_std=2.0)
    layers = meanfield_layers(meanfield)
    assert list(layers) == ["0", "3", "5"]
    assert [layer.prior_std for layer in layers.values()] == [0.2, 0.2, 2.0]
    assert isinstance(model[0], nn.Conv2d)  # the original is untouched
    x = torch.randn(3, 2, 4, 4)
    assert torch.equal(meanfield.eval()(x), model(x))
    dense = to_dense(meanfield)
    assert not meanfield_layers(dense) and [type(m) for m in dense] == [type(m) for m in model]
    assert dense.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(dense.state_dict()[key], value) for key, value in model.state_dict().items())
    attention = WithAttention()
    assert list(convertible_layers(attention)) == ["head"]
    converted = to_meanfield(attention)
    assert isinstance(converted.attention.out_proj, nn.Linear) and isinstance(converted.head, MeanFieldLinear)


def test_a_shared_layer_stays_one_layer() -> None:
    shared = nn.Linear(3, 3)
    meanfield = to_meanfield(nn.Sequential(shared, nn.ReLU(), shared))
    assert meanfield[0] is meanfield[2] and isinstance(meanfield[0], MeanFieldLinear)


def test_to_meanfield_refuses_a_model_without_layers() -> None:
    with pytest.raises(ValueError, match="no nn.Linear or nn.Conv2d"):
        to_meanfield(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match="init_std must be a positive number"):
        to_meanfield(nn.Linear(2, 2), init_std=0.0)


def test_bmr_prune_removes_exactly_the_weights_with_nonnegative_delta_f() -> None:
    torch.manual_seed(0)
    layers = meanfield_layers(to_meanfield(nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2)), prior_std=0.1))
    for index, layer in enumerate(layers.values()):
        randomise_posterior_(layer, seed=10 + index)
        with torch.no_grad():
            layer.weight_mean.mul_(0.1)  # means of the size of the stds: some weights go, some stay
    expected = {}
    for name, layer in layers.items():
        delta_f = delta_f_gaussian_spike(layer.weight_mean, layer.weight_log_std.exp(), prior_std=0.1, spike_std=1e-9)
        expected[name] = delta_f < 0
        assert 0 < int((delta_f >= 0).sum()) < delta_f.numel()  # both decisions occur
    removed = bmr_prune_(layers, spike_ratio=1e-8)
    for name, layer in layers.items():
        assert torch.equal(layer.weight_mask, expected[name])
        assert removed[name] == int((~expected[name]).sum())
    assert bmr_prune_(layers, spike_ratio=1e-8) == {name: 0 for name in layers}  # zeroed means: still pruned, not counted again


def test_weight_sparsity_counts_weights_not_biases() -> None:
    model = to_meanfield(nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 2)))
    model[0].prune_(torch.ones(5, 4, dtype=torch.bool))
    assert weight_sparsity(model) == pytest.approx(20 / 30)
    assert weight_sparsity(to_dense(model)) == pytest.approx(20 / 30)

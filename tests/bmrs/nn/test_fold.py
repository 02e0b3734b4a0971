import pytest
import torch

from bmrs.nn.fold import absorb_expected_noise_
from bmrs.models import ModelConfig, NoiseInit, build_network
from bmrs.nn.noise import noise_modules


@pytest.mark.parametrize("name", ["mlp", "lenet5"])
@pytest.mark.parametrize("log_b", [0.0, -0.5])
def test_absorbing_expected_noise_keeps_the_evaluation_function(name, log_b):
    model = build_network(ModelConfig(name), (1, 28, 28), 10, noise=NoiseInit(log_a=-20.0, log_b=log_b), seed=0)
    generator = torch.Generator().manual_seed(1)
    for noise in noise_modules(model).values():
        with torch.no_grad():  # posteriors of every kind: near 1, flat, near log a
            noise.mu.copy_(torch.empty_like(noise.mu).uniform_(-22.0, 1.0, generator=generator))
            noise.log_sigma.copy_(torch.empty_like(noise.log_sigma).uniform_(-5.0, 5.0, generator=generator))
        noise.prune_(torch.arange(noise.num_structures) % 3 == 0)
    images = torch.rand(8, 1, 28, 28, generator=generator)
    model.eval()
    before = model(images)
    masks = [noise.mask.clone() for noise in noise_modules(model).values()]
    absorb_expected_noise_(model)
    torch.testing.assert_close(model(images), before, rtol=1e-4, atol=1e-6)
    for noise, mask in zip(noise_modules(model).values(), masks):
        assert torch.equal(noise.mask, mask)
        assert torch.all(noise.mean()[~mask] == 0)
        torch.testing.assert_close(noise.mean()[mask], torch.full((int(mask.sum()),), float(torch.tensor(log_b).exp())), rtol=1e-6, atol=0)

"""AdaBelief follows the paper's update equations and optimises."""
from __future__ import annotations

import math

import pytest
import torch

from bmrs.sparsify import AdaBelief


def reference_steps(start: list[float], gradients: list[list[float]], lr: float, b1: float, b2: float, eps: float) -> list[float]:
    """Zhuang et al. 2020, algorithm 2, written out per coordinate in Python floats."""
    w, m, s = list(start), [0.0] * len(start), [0.0] * len(start)
    for t, gradient in enumerate(gradients, start=1):
        for i, g in enumerate(gradient):
            m[i] = b1 * m[i] + (1 - b1) * g
            s[i] = b2 * s[i] + (1 - b2) * (g - m[i]) ** 2 + eps
            w[i] -= lr * (m[i] / (1 - b1**t)) / (math.sqrt(s[i] / (1 - b2**t)) + eps)
    return w


def test_steps_follow_the_papers_equations() -> None:
    generator = torch.Generator().manual_seed(0)
    gradients = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    start = torch.randn(4, generator=generator, dtype=torch.float64)
    weight = torch.nn.Parameter(start.clone())
    optimizer = AdaBelief([weight], lr=0.01, betas=(0.8, 0.9), eps=1e-8)
    for gradient in gradients:
        weight.grad = gradient.clone()
        optimizer.step()
    expected = reference_steps(start.tolist(), gradients.tolist(), 0.01, 0.8, 0.9, 1e-8)
    assert weight.detach().tolist() == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_minimises_a_quadratic_and_its_state_round_trips() -> None:
    target = torch.tensor([1.0, -2.0, 0.5])
    weight = torch.nn.Parameter(torch.zeros(3))
    optimizer = AdaBelief([weight], lr=0.05)
    for step in range(400):
        optimizer.zero_grad()
        ((weight - target) ** 2).sum().backward()
        optimizer.step()
        if step == 199:  # a copy resumed from the state dict takes the same steps
            twin = torch.nn.Parameter(weight.detach().clone())
            twin_optimizer = AdaBelief([twin], lr=0.05)
            twin_optimizer.load_state_dict(optimizer.state_dict())
    assert torch.allclose(weight.detach(), target, atol=1e-3)
    for _ in range(200):
        twin_optimizer.zero_grad()
        ((twin - target) ** 2).sum().backward()
        twin_optimizer.step()
    assert torch.equal(twin.detach(), weight.detach())


def test_refuses_bad_settings() -> None:
    weight = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(ValueError, match="lr must be a positive number"):
        AdaBelief([weight], lr=0.0)
    with pytest.raises(ValueError, match="betas must be two numbers"):
        AdaBelief([weight], betas=(0.9, 1.0))

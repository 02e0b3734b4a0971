"""AdaBelief (Zhuang et al. 2020), the optimiser Markovic et al. 2023 fit their posteriors with.

Adam divides the momentum ``m_t`` by the root of the gradient's second moment; AdaBelief divides it
by the root of ``s_t``, the moving average of ``(g_t - m_t)^2``: how far the gradient is from what
the momentum predicted. Where gradients agree from step to step (the "belief" holds) the step is
large; where they are noisy it is small. Algorithm 2 of the paper, without weight decay or
rectification:

    m_t = b1 m_{t-1} + (1 - b1) g_t
    s_t = b2 s_{t-1} + (1 - b2) (g_t - m_t)^2 + eps
    w_t = w_{t-1} - lr (m_t / (1 - b1^t)) / (sqrt(s_t / (1 - b2^t)) + eps)

``eps = 1e-16`` is the paper's and optax's default (bmr4pml uses optax's ``adabelief``, whose
``eps_root`` enters ``s_t`` as the ``eps`` inside does here).
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor


class AdaBelief(torch.optim.Optimizer):
    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-16) -> None:
        if not (0 < lr < math.inf):
            raise ValueError(f"AdaBelief's lr must be a positive number, got {lr!r}")
        if len(betas) != 2 or not all(0 <= beta < 1 for beta in betas):
            raise ValueError(f"AdaBelief's betas must be two numbers in [0, 1), got {betas!r}")
        if not (0 <= eps < math.inf):
            raise ValueError(f"AdaBelief's eps must be >= 0, got {eps!r}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                grad = parameter.grad
                state = self.state[parameter]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(parameter)
                    state["exp_avg_belief"] = torch.zeros_like(parameter)
                state["step"] += 1
                momentum, belief = state["exp_avg"], state["exp_avg_belief"]
                momentum.lerp_(grad, 1 - beta1)
                surprise = grad - momentum
                belief.mul_(beta2).addcmul_(surprise, surprise, value=1 - beta2).add_(group["eps"])
                first_correction = 1 - beta1 ** state["step"]
                second_correction = 1 - beta2 ** state["step"]
                denominator = (belief / second_correction).sqrt_().add_(group["eps"])
                parameter.addcdiv_(momentum, denominator, value=-group["lr"] / first_correction)
        return loss

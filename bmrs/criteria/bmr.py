"""The Bayesian model reduction criteria (paper section 4): prune a structure where the evidence is
at least as high without it, ``dF >= 0``, under a log-normal (BMRS_N) or log-uniform (BMRS_U)
reduced prior. No threshold to tune: the reduced prior's support decides.

A coupled group (``GroupView``) is reduced as one: with the mean-field posterior ``q = prod_i q_i``
and priors that factorise the same way, ``log E_q[prod_i p~_i / p_i] = sum_i dF_i``, so the group's
evidence change is the sum of its members' and the exact rule is ``sum_i dF_i >= 0``. One member
that is confidently prunable can carry members that lean slightly to keep, and the reverse."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from bmrs.criteria.base import Decision, GroupView, LayerView, as_group, check_number, posterior, register_criterion, with_history
from bmrs.math.reduction import delta_f_lognormal, delta_f_loguniform


@register_criterion("bmrs_n")
@dataclass(frozen=True)
class BMRSLogNormal:
    """BMRS_N: prune where ``dF >= margin`` under a log-normal reduced prior at ``mu_p`` (paper eq. 8).

    ``mu_p = None`` puts the reduced prior at the layer's lower truncation bound ``log a``, as the
    paper does. ``margin`` is 0 for the exact rule; it exists only to reproduce other thresholds."""

    mu_p: float | None = None
    sigma_p: float = 1e-6
    margin: float = 0.0
    needs_gradients: ClassVar[bool] = False
    prunes_at_evidence_boundary: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.mu_p is not None:
            check_number(self, "mu_p", "a finite number (log theta at the reduced prior's mean), or null for the layer's log a")
        check_number(self, "sigma_p", "a finite number > 0 (the reduced prior's standard deviation of log theta)", lambda v: v > 0)
        check_number(self, "margin", "a finite number (0 for the exact rule dF >= 0)")

    def decide(self, view: GroupView | LayerView) -> Decision:
        group = as_group(view)
        delta_f = sum(self.delta_f(member) for member in group.members)
        return with_history(group, -delta_f, delta_f >= self.margin)

    def delta_f(self, layer: LayerView) -> Tensor:
        """One layer's ``dF`` per structure (float64)."""
        mu, sigma = posterior(layer.noise)
        mu_p = layer.noise.log_a if self.mu_p is None else self.mu_p
        return delta_f_lognormal(mu, sigma, mu_p=mu_p, sigma_p=self.sigma_p, log_a=layer.noise.log_a, log_b=layer.noise.log_b)


@register_criterion("bmrs_u")
@dataclass(frozen=True)
class BMRSLogUniform:
    """BMRS_U-p1: prune where ``dF >= 0`` under a log-uniform reduced prior on ``[2^-p2, 2^-p1]`` (eq. 10)."""

    p1: float = 8.0
    p2: float = 23.0
    needs_gradients: ClassVar[bool] = False
    prunes_at_evidence_boundary: ClassVar[bool] = True

    def __post_init__(self) -> None:
        p2 = check_number(self, "p2", "a finite number > p1 (the reduced support's lower end is 2^-p2)")
        check_number(self, "p1", f"a number with 0 <= p1 < p2 (p2 = {p2:g}; the reduced support's upper end is 2^-p1)",
                lambda v: 0 <= v < p2)  # fmt: skip

    def check_prior(self, log_a: float, log_b: float) -> None:
        """The reduced support ``[2^-p2, 2^-p1]`` must lie inside the prior's ``[e^log_a, e^log_b]``."""
        if self.p2 * math.log(2.0) > -log_a:
            raise ValueError(
                f"p2 = {self.p2:g} puts the reduced support's lower end 2^-{self.p2:g} below the noise prior's "
                f"e^{log_a:g} (noise.log_a); choose p2 <= {-log_a / math.log(2.0):.4g}, or lower noise.log_a"
            )
        if self.p1 * math.log(2.0) < -log_b:
            raise ValueError(
                f"p1 = {self.p1:g} puts the reduced support's upper end 2^-{self.p1:g} above the noise prior's "
                f"e^{log_b:g} (noise.log_b); choose p1 >= {-log_b / math.log(2.0):.4g}, or raise noise.log_b"
            )

    def decide(self, view: GroupView | LayerView) -> Decision:
        group = as_group(view)
        delta_f = sum(self.delta_f(member) for member in group.members)
        return with_history(group, -delta_f, delta_f >= 0)

    def delta_f(self, layer: LayerView) -> Tensor:
        """One layer's ``dF`` per structure (float64)."""
        mu, sigma = posterior(layer.noise)
        return delta_f_loguniform(mu, sigma, p1=self.p1, p2=self.p2, log_a=layer.noise.log_a, log_b=layer.noise.log_b)

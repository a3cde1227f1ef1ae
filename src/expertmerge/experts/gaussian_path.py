"""Any Gaussian-path model q(z~_u | x) = N(alpha~_u x, sigma~_u^2 I), VP or not (Eq. 10-12).

The expert's time u is found by matching gamma~_u = gamma (Eq. 10); its input is the
rescaled state z~ = (alpha~/alpha) z = alpha~ x (Eq. 11); its output (epsilon, x0, v or the velocity)
is converted to the estimate of x0. "v" is progressive distillation's v = alpha~ eps - sigma~ x0; "velocity"
is dz~/du = alpha~' x0 + sigma~' eps, what flow matching and rectified flow learn, so that any flow network
wraps into an expert in one line: x0 = (sigma~' z~ - sigma~ v) / (sigma~' alpha~ - sigma~ alpha~').
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .base import Expert, broadcast_level

PARAMETERIZATIONS = ("eps", "x0", "v", "velocity")


@dataclass
class GaussianSchedule:
    """u -> (alpha~_u, sigma~_u) on [t_min, t_max], with negative log-SNR increasing in u.

    `alpha` and `sigma` take and return float64 tensors. `gamma_inverse` (gamma -> u) is
    optional: without it, u is found by bisection to float64 precision. `alpha_derivative` and
    `sigma_derivative` (d/du, for the "velocity" parameterisation) are optional: without them, autograd
    differentiates `alpha` and `sigma`.
    """

    alpha: Callable[[torch.Tensor], torch.Tensor]
    sigma: Callable[[torch.Tensor], torch.Tensor]
    t_min: float = 0.0
    t_max: float = 1.0
    gamma_inverse: Callable[[torch.Tensor], torch.Tensor] | None = None
    alpha_derivative: Callable[[torch.Tensor], torch.Tensor] | None = None
    sigma_derivative: Callable[[torch.Tensor], torch.Tensor] | None = None

    def derivatives(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha~'(u), sigma~'(u)), elementwise."""
        given = (self.alpha_derivative, self.sigma_derivative)
        if all(given):
            return tuple(derivative(u) for derivative in given)
        with torch.enable_grad():  # samplers run under no_grad; these graphs stay here
            at = u.detach().clone().requires_grad_(True)
            return tuple(derivative(u) if derivative else torch.autograd.grad(function(at).sum(), at)[0].detach()
                         for function, derivative in ((self.alpha, given[0]), (self.sigma, given[1])))

    def gamma(self, u: torch.Tensor) -> torch.Tensor:
        return 2 * (torch.log(self.sigma(u)) - torch.log(self.alpha(u)))

    def time_at(self, gamma: torch.Tensor) -> torch.Tensor:
        if self.gamma_inverse is not None:
            return self.gamma_inverse(gamma)
        lo = torch.full_like(gamma, self.t_min)
        hi = torch.full_like(gamma, self.t_max)
        for _ in range(64):  # bisection halves [t_min, t_max] to float64 resolution
            mid = (lo + hi) / 2
            above = self.gamma(mid) > gamma
            hi = torch.where(above, mid, hi)
            lo = torch.where(above, lo, mid)
        return (lo + hi) / 2


class GaussianPathExpert(Expert):
    """Wrap `net(z~, u) -> output` trained on `schedule`, with output in PARAMETERIZATIONS."""

    def __init__(self, net, schedule: GaussianSchedule, parameterization: str = "eps"):
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}")
        self.net, self.schedule, self.parameterization = net, schedule, parameterization
        ends = schedule.gamma(torch.tensor([schedule.t_min, schedule.t_max], dtype=torch.float64))
        self.gamma_min, self.gamma_max = float(ends[0]), float(ends[1])
        if not self.gamma_min < self.gamma_max:
            raise ValueError("schedule's negative log-SNR must increase from t_min to t_max")

    def _denoise(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        u = self.schedule.time_at(2 * torch.log(s))  # Eq. 10
        alpha, sigma = self.schedule.alpha(u), self.schedule.sigma(u)
        a, b = broadcast_level(alpha, x), broadcast_level(sigma, x)
        z = a * x  # Eq. 11-12: alpha~/alpha * z_t with z_t = alpha x
        out = self.net(z, u.to(x.dtype)).to(x.dtype)
        if self.parameterization == "eps":
            return (z - b * out) / a
        if self.parameterization == "x0":
            return out
        if self.parameterization == "v":
            return (a * z - b * out) / (a * a + b * b)  # v = alpha~ eps - sigma~ x0
        da, db = (broadcast_level(d, x) for d in self.schedule.derivatives(u))
        return (db * z - b * out) / (db * a - b * da)  # velocity = alpha~' x0 + sigma~' eps

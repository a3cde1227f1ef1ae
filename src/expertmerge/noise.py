"""One noise clock for every expert: gamma, the negative log-SNR.

A Gaussian path q(z|x) = N(alpha*x, sigma^2 I) has gamma = -log(alpha^2 / sigma^2).
Dividing the state by alpha gives "VE coordinates" x = z/alpha = x0 + s*n with the
noise level s = sigma/alpha = exp(gamma/2). Variance preserving (VP) paths have
alpha^2 = sigmoid(-gamma) and sigma^2 = sigmoid(gamma).

Functions take floats or torch tensors. The module imports no torch, so that the workflow can
check a config's ranges without it; float64 is used wherever gamma reaches +-13, where float32
sigmoid/exp lose digits.
"""
from __future__ import annotations

import math
from collections.abc import Sequence


def gamma_to_noise_level(gamma):
    """s = sigma/alpha = exp(gamma/2)."""
    return (gamma / 2).exp() if hasattr(gamma, "exp") else math.exp(gamma / 2)


def noise_level_to_gamma(noise_level):
    """gamma = 2 log s."""
    return 2 * noise_level.log() if hasattr(noise_level, "log") else 2 * math.log(noise_level)


def gamma_range(noise_range: dict) -> tuple[float, float]:
    """A noise range as config.yaml and the family registry write it, {sigma_min, sigma_max} or
    {gamma_min, gamma_max}, as (gamma_min, gamma_max)."""
    keys = ("sigma_min", "sigma_max") if "sigma_min" in noise_range else ("gamma_min", "gamma_max")
    try:
        lo, hi = (float(noise_range[key]) for key in keys)
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"a noise range is {{sigma_min, sigma_max}} (noise levels > 0) or {{gamma_min, gamma_max}} "
                         f"(numbers), with min < max; got {noise_range!r}") from None
    if keys[0] == "sigma_min" and not (0 < lo < hi < math.inf):
        raise ValueError(f"a noise range needs 0 < sigma_min < sigma_max < inf, got sigma_min={lo}, sigma_max={hi}")
    if keys[0] == "gamma_min" and not (-math.inf < lo < hi < math.inf):
        raise ValueError(f"a noise range needs finite gamma_min < gamma_max, got gamma_min={lo}, gamma_max={hi}")
    return (noise_level_to_gamma(lo), noise_level_to_gamma(hi)) if keys[0] == "sigma_min" else (lo, hi)


def linear_gamma(t, gamma_0: float, gamma_1: float):
    """gamma_0 + t (gamma_1 - gamma_0): the merged clock at eta = t (Eq. 14) and VDM's linear schedule."""
    return gamma_0 + t * (gamma_1 - gamma_0)


def linear_gamma_time(gamma, gamma_0: float, gamma_1: float):
    """The t at which `linear_gamma` reaches gamma (its inverse)."""
    return (gamma - gamma_0) / (gamma_1 - gamma_0)


def vp_alpha_sigma(gamma):
    """VP (alpha, sigma) at gamma, in float64: alpha^2 = sigmoid(-gamma), sigma^2 = sigmoid(gamma)."""
    if hasattr(gamma, "double"):
        g = gamma.double()
        return (-g).sigmoid().sqrt(), g.sigmoid().sqrt()
    import torch  # a float: torch's float64 sigmoid, so floats and tensors agree to the last digit

    g = torch.tensor(float(gamma), dtype=torch.float64)
    return (-g).sigmoid().sqrt().item(), g.sigmoid().sqrt().item()


def vp_alpha_from_noise_level(noise_level):
    """VP alpha for VE noise level s: alpha = 1/sqrt(1 + s^2)."""
    return (1 + noise_level**2) ** -0.5


def feasible_etas(gamma_ranges: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """For experts with these gamma ranges (low to high noise), the feasible (eta_lo, eta_hi) of each switch (Eq. 15)."""
    ranges = [(float(lo), float(hi)) for lo, hi in gamma_ranges]
    gamma_0, gamma_1 = min(lo for lo, _ in ranges), max(hi for _, hi in ranges)
    describe = ", ".join(f"[{lo:.4g}, {hi:.4g}]" for lo, hi in ranges)
    if ranges[0][0] > gamma_0 or ranges[-1][1] < gamma_1:
        raise ValueError(f"cannot merge experts with gamma ranges {describe} (low to high noise): the "
                         "lowest-noise expert must reach the lowest gamma and the highest-noise expert the highest")
    feasible = []
    for low, high in zip(ranges[:-1], ranges[1:]):
        lo, hi = max(high[0], gamma_0), min(low[1], gamma_1)
        if lo > hi:
            raise ValueError(f"experts with gamma ranges [{low[0]:.4g}, {low[1]:.4g}] and [{high[0]:.4g}, "
                             f"{high[1]:.4g}] do not overlap: no switch level is feasible")
        feasible.append((linear_gamma_time(lo, gamma_0, gamma_1), linear_gamma_time(hi, gamma_0, gamma_1)))
    return feasible

"""One noise clock for every expert: gamma, the negative log-SNR.

A Gaussian path q(z|x) = N(alpha*x, sigma^2 I) has gamma = -log(alpha^2 / sigma^2).
Dividing the state by alpha gives "VE coordinates" x = z/alpha = x0 + s*n with the
noise level s = sigma/alpha = exp(gamma/2). Variance preserving (VP) paths have
alpha^2 = sigmoid(-gamma) and sigma^2 = sigmoid(gamma).

Functions accept floats or tensors; float64 is used wherever gamma reaches +-13,
where float32 sigmoid/exp lose digits.
"""
from __future__ import annotations

import math

import torch

from .ranges import EDM_SIGMA_MAX, EDM_SIGMA_MIN, VDM_GAMMA_MAX, VDM_GAMMA_MIN, gamma_of_noise_level  # noqa: F401


def _as_f64(value) -> torch.Tensor:
    return torch.as_tensor(value, dtype=torch.float64)


def gamma_to_noise_level(gamma):
    """s = sigma/alpha = exp(gamma/2)."""
    if isinstance(gamma, torch.Tensor):
        return torch.exp(gamma / 2)
    return math.exp(gamma / 2)


def noise_level_to_gamma(noise_level):
    """gamma = 2 log s."""
    if isinstance(noise_level, torch.Tensor):
        return 2 * torch.log(noise_level)
    return gamma_of_noise_level(noise_level)


def vp_alpha_sigma(gamma):
    """VP (alpha, sigma) at gamma: alpha^2 = sigmoid(-gamma), sigma^2 = sigmoid(gamma)."""
    g = _as_f64(gamma)
    alpha, sigma = torch.sigmoid(-g).sqrt(), torch.sigmoid(g).sqrt()
    if isinstance(gamma, torch.Tensor):
        return alpha, sigma
    return alpha.item(), sigma.item()


def vp_alpha_from_noise_level(noise_level):
    """VP alpha for VE noise level s: alpha = 1/sqrt(1 + s^2)."""
    return (1 + noise_level**2) ** -0.5


def edm_gamma_range(sigma_min: float = EDM_SIGMA_MIN, sigma_max: float = EDM_SIGMA_MAX):
    """EDM's sigma range as gamma: (2 log 0.002, 2 log 80) = (-12.43, 8.764)."""
    return noise_level_to_gamma(sigma_min), noise_level_to_gamma(sigma_max)


def as_noise_level_batch(noise_level, batch: int, device=None) -> torch.Tensor:
    """Broadcast a float or [N] tensor of noise levels to a float64 tensor of shape [N]."""
    s = torch.as_tensor(noise_level, dtype=torch.float64, device=device)
    if s.ndim == 0:
        s = s.expand(batch)
    if s.shape != (batch,):
        raise ValueError(f"noise level must be a float or a tensor of shape [{batch}], got shape {tuple(s.shape)}")
    return s

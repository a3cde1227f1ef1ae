"""The exact expert for Gaussian data N(mu, Sigma): D = mu + Sigma (Sigma + s^2 I)^-1 (x - mu).

Used to prove samplers and likelihoods against closed forms.
"""
from __future__ import annotations

import torch

from .base import Expert


class GaussianExpert(Expert):
    """Exact denoiser for x0 ~ N(mean, cov); mean has shape [C, H, W], cov [D, D] (D = C*H*W)."""

    def __init__(self, mean: torch.Tensor, cov: torch.Tensor, gamma_min: float, gamma_max: float):
        mean = torch.as_tensor(mean, dtype=torch.float64)
        cov = torch.as_tensor(cov, dtype=torch.float64)
        dim = mean.numel()
        if cov.shape != (dim, dim):
            raise ValueError(f"cov must have shape [{dim}, {dim}] for a mean of shape {tuple(mean.shape)}")
        self.mean, self.cov = mean, cov
        self.eigenvalues, self.eigenvectors = torch.linalg.eigh((cov + cov.T) / 2)
        if self.eigenvalues.min() < 0:
            raise ValueError("cov must be positive semi-definite")
        self.gamma_min, self.gamma_max = float(gamma_min), float(gamma_max)

    def _denoise(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        u = self.eigenvectors.to(x.device)
        centred = x.reshape(n, -1).double() - self.mean.to(x.device).reshape(1, -1)
        shrink = self.eigenvalues.to(x.device) / (self.eigenvalues.to(x.device) + s[:, None] ** 2)
        d = self.mean.to(x.device).reshape(1, -1) + ((centred @ u) * shrink) @ u.T
        return d.reshape(x.shape).to(x.dtype)

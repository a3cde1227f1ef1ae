"""EDM experts: a preconditioned network D(x; sigma) (NVlabs' VPPrecond/EDMPrecond form).

EDM already works in VE coordinates, so sigma is our noise level s and D is used as is.
"""
from __future__ import annotations

import torch

from ..noise import EDM_SIGMA_MAX, EDM_SIGMA_MIN, noise_level_to_gamma
from .base import Expert


class EDMExpert(Expert):
    """Wrap `net(x, sigma) -> D` (x float32 [N,C,H,W], sigma float32 [N]) as an expert."""

    def __init__(self, net, sigma_min: float = EDM_SIGMA_MIN, sigma_max: float = EDM_SIGMA_MAX):
        self.net = net
        self.gamma_min = noise_level_to_gamma(sigma_min)
        self.gamma_max = noise_level_to_gamma(sigma_max)

    def _denoise(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return self.net(x, s.to(x.dtype)).to(x.dtype)

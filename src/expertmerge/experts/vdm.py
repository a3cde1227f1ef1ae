"""VDM experts: an epsilon-prediction network fed gamma on a VP path.

With gamma = 2 log s the VP state is z = alpha*x, and since x = x0 + s*eps,
D = (z - sigma*eps_hat)/alpha = x - s*eps_hat.
"""
from __future__ import annotations

import torch

from ..noise import VDM_GAMMA_MAX, VDM_GAMMA_MIN, vp_alpha_from_noise_level
from .base import Expert, broadcast_level


class VDMExpert(Expert):
    """Wrap `net(z, gamma) -> eps_hat` (z float32 [N,C,H,W], gamma float32 [N]) as an expert."""

    def __init__(self, net, gamma_min: float = VDM_GAMMA_MIN, gamma_max: float = VDM_GAMMA_MAX):
        self.net = net
        self.gamma_min = float(gamma_min)
        self.gamma_max = float(gamma_max)

    def _denoise(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        gamma = 2 * torch.log(s)
        alpha = vp_alpha_from_noise_level(s)
        eps_hat = self.net(broadcast_level(alpha, x) * x, gamma.to(x.dtype))
        return x - broadcast_level(s, x) * eps_hat.to(x.dtype)

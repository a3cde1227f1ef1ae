"""EDM experts: a preconditioned network D(x; sigma) (NVlabs' VPPrecond/EDMPrecond form).

EDM already works in VE coordinates, so sigma is our noise level s and D is used as is.
"""
from __future__ import annotations

import torch

from ..noise import EDM_SIGMA_MAX, EDM_SIGMA_MIN, noise_level_to_gamma
from .base import Expert
from .edm_pickle import read_edm_pickle, read_edm_snapshot  # noqa: F401  (NVlabs' pickles, read without running code)


class EDMExpert(Expert):
    """Wrap `net(x, sigma) -> D` (x float32 [N,C,H,W], sigma float32 [N]) as an expert."""

    def __init__(self, net, sigma_min: float = EDM_SIGMA_MIN, sigma_max: float = EDM_SIGMA_MAX):
        self.net = net
        self.gamma_min = noise_level_to_gamma(sigma_min)
        self.gamma_max = noise_level_to_gamma(sigma_max)

    def _denoise(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return self.net(x, s.to(x.dtype)).to(x.dtype)


class EDMPrecond(torch.nn.Module):
    """EDM's preconditioning around a raw network F (Karras et al. 2022, Table 1, Eq. 7):
    D(x; sigma) = c_skip x + c_out F(c_in x; c_noise), with
    c_skip = sigma_data^2/(sigma^2 + sigma_data^2), c_out = sigma sigma_data/sqrt(sigma^2 + sigma_data^2),
    c_in = 1/sqrt(sigma^2 + sigma_data^2), c_noise = ln(sigma)/4.

    `model(x, noise_labels)` is the raw network; forward(x, sigma) returns D for sigma a float
    or a tensor of shape [N].
    """

    def __init__(self, model: torch.nn.Module, sigma_data: float = 0.5):
        super().__init__()
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data!r}")
        self.model, self.sigma_data = model, float(sigma_data)

    def coefficients(self, sigma: torch.Tensor):
        """(c_skip, c_out, c_in, c_noise) at sigma, in sigma's dtype and shape."""
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        c_in = 1 / (sd2 + sigma**2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1).expand(x.shape[0])
        c_skip, c_out, c_in, c_noise = (c.to(x.dtype) for c in self.coefficients(sigma))
        per_image = (-1, *([1] * (x.ndim - 1)))
        F_x = self.model(c_in.reshape(per_image) * x, c_noise)
        return c_skip.reshape(per_image) * x + c_out.reshape(per_image) * F_x.to(x.dtype)

"""The exact expert for 8-bit data with independent pixels: level k with probability p_k, at data value
scale*k + offset of a pixel convention. D(x; s) is each pixel's posterior mean over the 256 atoms.

It learns the lattice exactly, so it shows what a convention mismatch costs a sharp model near
gamma_min, where a Gaussian's smooth density cannot (benchmarks/pixel_convention.py, tests/test_pixels.py).
"""
from __future__ import annotations

import torch

from ..images import COMMON_PIXELS, PixelScale
from .base import Expert


class LatticeExpert(Expert):
    """Exact denoiser for pixels drawn i.i.d. from `probabilities` (256 levels) placed by `pixels`."""

    def __init__(self, probabilities, gamma_min: float, gamma_max: float, pixels: PixelScale | None = None):
        probabilities = torch.as_tensor(probabilities, dtype=torch.float64)
        if probabilities.shape != (256,) or bool((probabilities < 0).any()) or not probabilities.sum() > 0:
            raise ValueError("probabilities must be 256 non-negative numbers, not all zero")
        super().__init__(None, gamma_min, gamma_max)
        self.log_prior = (probabilities / probabilities.sum()).log()
        pixels = pixels or COMMON_PIXELS
        self.atoms = pixels.scale * torch.arange(256, dtype=torch.float64) + pixels.offset

    def _denoise(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        atoms, log_prior = self.atoms.to(x.device), self.log_prior.to(x.device)
        distance = x.double().unsqueeze(-1) - atoms  # [N, C, H, W, 256]
        logits = log_prior - 0.5 * distance.square() / s.reshape(-1, 1, 1, 1, 1).square()
        return (logits.softmax(dim=-1) * atoms).sum(dim=-1).to(x.dtype)

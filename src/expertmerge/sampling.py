"""Samplers over any expert: the adaptive PF-ODE, EDM's Heun (Algorithm 1) and VDM's ancestral.

All work in VE coordinates x = z/alpha on the expert's gamma range. The prior is the VP one,
z ~ N(0, I) at gamma_max, i.e. x = sqrt(1 + s_max^2) * n. Image i draws its latent and any
later noise from its own generator seeded with seeds[i], so results do not depend on batching.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .experts.base import check_expert
from .images import to_uint8
from .merge import pieces
from .noise import gamma_to_noise_level
from .seeding import per_image_draw, per_image_generators


def odeint(*args, **kwargs):
    """torchdiffeq.odeint."""
    from torchdiffeq import odeint  # imported on use: it pulls in scipy.integrate (~0.3 s per job)

    return odeint(*args, **kwargs)


@dataclass
class SampleRecord:
    x: torch.Tensor       # float32 [N, C, H, W], data scale, before quantisation
    images: torch.Tensor  # uint8 [N, H, W, C]
    nfe: torch.Tensor     # int64 [N], network evaluations spent on each image


def _check_request(expert, seeds, shape) -> tuple[list[int], tuple[int, ...]]:
    check_expert(expert)
    seeds = [int(seed) for seed in seeds]
    if not seeds:
        raise ValueError("seeds must hold at least one seed")
    if len(shape) != 3 or any(int(d) <= 0 for d in shape):
        raise ValueError(f"shape must be (C, H, W) with positive sizes, got {tuple(shape)}")
    return seeds, tuple(int(d) for d in shape)


def _normal(generators, shape, device) -> torch.Tensor:
    """One standard-normal draw of `shape` per image."""
    return per_image_draw(generators, lambda g: torch.randn(shape, generator=g), device)


def _in_batches(sample_batch: Callable, expert, seeds, shape, batch_size, device) -> SampleRecord:
    seeds, shape = _check_request(expert, seeds, shape)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    device = torch.device(device or "cpu")
    xs, nfes = [], []
    with torch.no_grad():
        for start in range(0, len(seeds), batch_size):
            x, nfe = sample_batch(expert, per_image_generators(seeds[start:start + batch_size]), shape, device)
            xs.append(x.float().cpu())
            nfes.append(torch.full((x.shape[0],), nfe, dtype=torch.int64))
    x = torch.cat(xs)
    return SampleRecord(x=x, images=to_uint8(x), nfe=torch.cat(nfes))


def _prior(expert, generators, shape, device) -> torch.Tensor:
    s_max = gamma_to_noise_level(float(expert.gamma_max))
    return math.sqrt(1 + s_max**2) * _normal(generators, shape, device)


def per_image_max_rms(error_ratio: torch.Tensor) -> torch.Tensor:
    """Solver error norm: the worst image's RMS, so every image in the batch meets the tolerance."""
    return error_ratio.reshape(error_ratio.shape[0], -1).pow(2).mean(dim=1).sqrt().max()


def sample_ode(expert, seeds, shape, *, rtol: float = 1e-5, atol: float = 1e-5, batch_size: int = 64,
               device=None) -> SampleRecord:
    """PF-ODE dx/dgamma = (x - D(x; e^(gamma/2)))/2 from gamma_max to gamma_min with dopri5."""
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"tolerances must be > 0, got rtol={rtol}, atol={atol}")

    def batch(expert, generators, shape, device):
        gamma_min, gamma_max, calls = float(expert.gamma_min), float(expert.gamma_max), 0

        def velocity(gamma, x):
            nonlocal calls
            calls += 1
            gamma = min(max(float(gamma), gamma_min), gamma_max)  # dopri5's initial-step trial may overshoot
            return (x - expert.denoise(x, gamma_to_noise_level(gamma))) / 2

        gammas = torch.tensor([gamma_max, gamma_min], dtype=torch.float64)
        # step_t makes the last step end on gamma_min instead of stepping past it and interpolating back.
        path = odeint(velocity, _prior(expert, generators, shape, device), gammas, method="dopri5",
                      rtol=rtol, atol=atol, options=dict(norm=per_image_max_rms, step_t=gammas[1:]))
        return path[-1], calls

    return _in_batches(batch, expert, seeds, shape, batch_size, device)


def heun_noise_levels(expert, steps: int = 18, rho: float = 7.0) -> list[float]:
    """EDM's time steps (Eq. 5 of Karras et al.) on the expert's range, its switch levels inserted, then 0."""
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    gamma_min, gamma_max = float(expert.gamma_min), float(expert.gamma_max)
    s_min, s_max = gamma_to_noise_level(gamma_min), gamma_to_noise_level(gamma_max)
    gammas = [2 * rho * math.log(s_max ** (1 / rho) + i / (steps - 1) * (s_min ** (1 / rho) - s_max ** (1 / rho)))
              for i in range(steps)]
    switches = [lo for lo, _, _ in pieces(expert)[1:]]
    gammas = sorted(set(gammas) | {g for g in switches if all(abs(g - h) > 1e-9 for h in gammas)}, reverse=True)
    return [gamma_to_noise_level(g) for g in gammas] + [0.0]


def _step_expert(expert, gamma_from: float):
    """The single expert that serves a step going down from gamma_from (the piece just below it)."""
    for lo, hi, piece in pieces(expert):
        if lo < gamma_from <= hi + 1e-9:
            return piece
    return pieces(expert)[0][2]


def sample_heun(expert, seeds, shape, *, steps: int = 18, rho: float = 7.0, noise_levels=None,
                batch_size: int = 64, device=None) -> SampleRecord:
    """EDM Algorithm 1 (deterministic Heun, rho = 7); no step straddles two experts.

    `noise_levels` (decreasing, ending in 0) overrides the schedule `heun_noise_levels(expert, steps, rho)`.
    """
    levels = heun_noise_levels(expert, steps, rho) if noise_levels is None else [float(s) for s in noise_levels]
    if len(levels) < 2 or levels[-1] != 0 or any(b >= a for a, b in zip(levels[:-1], levels[1:])):
        raise ValueError("noise_levels must decrease strictly and end in 0")

    def batch(expert, generators, shape, device):
        x, calls = _prior(expert, generators, shape, device), 0
        for s_cur, s_next in zip(levels[:-1], levels[1:]):
            step_expert = _step_expert(expert, 2 * math.log(s_cur))
            d = (x - step_expert.denoise(x, s_cur)) / s_cur
            x_next = x + (s_next - s_cur) * d
            calls += 1
            if s_next > 0:  # second-order correction, skipped on the final step to 0
                d_next = (x_next - step_expert.denoise(x_next, s_next)) / s_next
                x_next = x + (s_next - s_cur) * (d + d_next) / 2
                calls += 1
            x = x_next
        return x, calls

    return _in_batches(batch, expert, seeds, shape, batch_size, device)


def sample_ancestral(expert, seeds, shape, *, steps: int = 256, batch_size: int = 64,
                     device=None) -> SampleRecord:
    """VDM's ancestral sampler on a linear gamma grid, in VE coordinates:
    x_s = x_t - c (x_t - D(x_t; s_t)) + s_s sqrt(c) n,  c = 1 - exp(gamma_s - gamma_t)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")

    def batch(expert, generators, shape, device):
        gamma_min, gamma_max = float(expert.gamma_min), float(expert.gamma_max)
        x = _prior(expert, generators, shape, device)
        for i in range(steps, 0, -1):
            gamma_t = gamma_min + i / steps * (gamma_max - gamma_min)
            gamma_s = gamma_min + (i - 1) / steps * (gamma_max - gamma_min)
            c = -math.expm1(gamma_s - gamma_t)
            denoised = expert.denoise(x, gamma_to_noise_level(gamma_t))
            noise = _normal(generators, shape, device)
            x = x - c * (x - denoised) + gamma_to_noise_level(gamma_s) * math.sqrt(c) * noise
        return x, steps

    return _in_batches(batch, expert, seeds, shape, batch_size, device)

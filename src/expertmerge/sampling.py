"""Samplers over any expert: the adaptive PF-ODE, EDM's Heun (Algorithm 1) and VDM's ancestral.

All run on the expert's gamma range from the VP prior z ~ N(0, I) at gamma_max. The PF-ODE integrates
the VP state z, as score_sde's RK45 sampler does (the paper's NFE are counted so); Heun and the
ancestral sampler step in VE coordinates x = z/alpha. Image i draws its latent and any later noise
from its own generator seeded with seeds[i]. The fixed-step samplers' images therefore do not depend
on batching; the adaptive solver shares one step size per batch (see `ERROR_NORMS`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .experts.base import check_expert, raise_if_not_finite
from .images import to_uint8
from .limits import TOLERANCE, in_range
from .merge import pieces
from .noise import gamma_to_noise_level, linear_gamma, vp_alpha_sigma
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


def _denoised(expert, x: torch.Tensor, s, seeds) -> torch.Tensor:
    """D(x; s), refused with one message naming the expert, the images (seeds) and the noise level when
    it is NaN or Inf: a sampler never turns a broken expert into finished-looking images."""
    denoised = expert.denoise(x, s)
    raise_if_not_finite(denoised, seeds, "the output D(x; s)", s, expert)
    return denoised


def _in_batches(sample_batch: Callable, expert, seeds, shape, batch_size, device) -> SampleRecord:
    seeds, shape = _check_request(expert, seeds, shape)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    device = torch.device(device or "cpu")
    xs, nfes = [], []
    with torch.no_grad():
        for start in range(0, len(seeds), batch_size):
            batch = seeds[start:start + batch_size]
            x, nfe = sample_batch(expert, batch, per_image_generators(batch), shape, device)
            xs.append(x.float().cpu())
            nfes.append(torch.full((x.shape[0],), nfe, dtype=torch.int64))
    x = torch.cat(xs)
    return SampleRecord(x=x, images=to_uint8(x), nfe=torch.cat(nfes))


def _prior(expert, generators, shape, device) -> torch.Tensor:
    s_max = gamma_to_noise_level(float(expert.gamma_max))
    return math.sqrt(1 + s_max**2) * _normal(generators, shape, device)


def batch_rms(error_ratio: torch.Tensor) -> torch.Tensor:
    """Solver error norm: the RMS over every component of the batch's state, as scipy's solve_ivp in score_sde."""
    return error_ratio.pow(2).mean().sqrt()


def per_image_max_rms(error_ratio: torch.Tensor) -> torch.Tensor:
    """Solver error norm: the worst image's RMS, so every image in the batch meets the tolerance."""
    return error_ratio.reshape(error_ratio.shape[0], -1).pow(2).mean(dim=1).sqrt().max()


# How the adaptive solvers measure a batch's error. A batch is one ODE system with one step size, so its
# NFE, and within tolerance its results, depend on the batch: "batch-rms" is the paper's (score_sde's)
# count, to be read with its batch size; "image-max" makes every image meet the tolerance.
ERROR_NORMS = {"batch-rms": batch_rms, "image-max": per_image_max_rms}


def solver_norm(name: str):
    if name not in ERROR_NORMS:
        raise ValueError(f"error_norm must be one of {', '.join(ERROR_NORMS)}, got {name!r}")
    return ERROR_NORMS[name]


def vp_velocity(denoised: torch.Tensor, z: torch.Tensor, alpha: float) -> torch.Tensor:
    """The VP PF-ODE in gamma (Eq. 5 with f = -sigma^2/2, g^2 = sigma^2): dz/dgamma = alpha (alpha z - D) / 2."""
    return alpha * (alpha * z - denoised) / 2


def check_tolerances(rtol, atol) -> None:
    """Refuse solver tolerances outside limits.TOLERANCE: below it the float64 steps underflow (a NaN noise level
    deep in the solve), above it the error control means nothing."""
    low, high = TOLERANCE
    for name, value in (("rtol", rtol), ("atol", atol)):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan  # in no range
        if not in_range(number, TOLERANCE):
            raise ValueError(f"solver tolerances: {name} must be a number in [{low:g}, {high:g}], got {value!r}")


def ode_segment(expert, z: torch.Tensor, gamma_from: float, gamma_to: float, seeds, *, rtol: float, atol: float,
                norm, first_step: float | None = None) -> tuple[torch.Tensor, int, float | None]:
    """The VP PF-ODE state z carried from gamma_from to gamma_to with dopri5: (z, function evaluations, the
    solver's last full step, to start the next segment with)."""
    low, high, calls = min(gamma_from, gamma_to), max(gamma_from, gamma_to), 0

    def velocity(gamma, z):
        nonlocal calls
        calls += 1
        gamma = min(max(float(gamma), low), high)  # dopri5's initial-step trial may overshoot
        alpha, _ = vp_alpha_sigma(gamma)
        return vp_velocity(_denoised(expert, z / alpha, gamma_to_noise_level(gamma), seeds), z, alpha)

    z, last_step = solve(velocity, z, gamma_from, gamma_to, rtol=rtol, atol=atol, norm=norm, first_step=first_step)
    return z, calls, last_step


def solve(function, state: torch.Tensor, t_from: float, t_to: float, *, rtol: float, atol: float, norm,
          first_step: float | None = None) -> tuple[torch.Tensor, float | None]:
    """dopri5 from t_from to t_to, its last step cut to end on t_to (not stepped past and interpolated back).
    Returns the final state and the size of its last full accepted step: a solve continued from here with it
    as `first_step` spends no evaluations on choosing and growing a first step again (None: dopri5's heuristic)."""
    accepted = []
    function.callback_accept_step = lambda t0, y0, dt: accepted.append(abs(float(dt)))
    times = torch.tensor([t_from, t_to], dtype=torch.float64, device=state.device)
    options = dict(norm=norm, step_t=times[1:], **({} if first_step is None else {"first_step": first_step}))
    final = odeint(function, state, times, method="dopri5", rtol=rtol, atol=atol, options=options)[-1]
    return final, (accepted[-2] if len(accepted) > 1 else accepted[-1] if accepted else None)  # [-1] is cut to t_to


def sample_ode(expert, seeds, shape, *, rtol: float = 1e-5, atol: float = 1e-5, batch_size: int = 64,
               error_norm: str = "batch-rms", device=None) -> SampleRecord:
    """The VP PF-ODE from z ~ N(0, I) at gamma_max to gamma_min with dopri5 (RK45), then x = z/alpha."""
    check_tolerances(rtol, atol)
    norm = solver_norm(error_norm)

    def batch(expert, seeds, generators, shape, device):
        gamma_min, gamma_max = float(expert.gamma_min), float(expert.gamma_max)
        z, calls, _ = ode_segment(expert, _normal(generators, shape, device), gamma_max, gamma_min, seeds,
                                  rtol=rtol, atol=atol, norm=norm)
        return z / vp_alpha_sigma(gamma_min)[0], calls

    return _in_batches(batch, expert, seeds, shape, batch_size, device)


HEUN_SCHEDULES = ("inserted", "split")


def _rho_levels(s_from: float, s_to: float, count: int, rho: float) -> list[float]:
    """`count` + 1 levels from s_from to s_to, equally spaced in s^(1/rho) (EDM's Eq. 5), both ends included."""
    a, b = s_from ** (1 / rho), s_to ** (1 / rho)
    return [(a + i / count * (b - a)) ** rho for i in range(count + 1)]


def heun_noise_levels(expert, steps: int = 18, rho: float = 7.0, schedule: str = "split") -> list[float]:
    """EDM's time steps (Eq. 5 of Karras et al.) on the expert's range, then 0; a merged expert's switch
    levels become step boundaries, so that no step straddles two experts. `schedule` says how:
    "inserted" adds each switch to EDM's `steps` levels (2 more NFE per switch); "split" keeps `steps`
    levels (the single expert's 2 steps - 1 NFE): the switch takes the place of the level nearest to it
    in EDM's spacing, and each side of it is spaced as EDM's schedule between its own ends (with fewer
    interior levels than switches, they are inserted)."""
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    if schedule not in HEUN_SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(HEUN_SCHEDULES)}, got {schedule!r}")
    s_min, s_max = gamma_to_noise_level(float(expert.gamma_min)), gamma_to_noise_level(float(expert.gamma_max))
    levels = _rho_levels(s_max, s_min, steps - 1, rho)
    switches = sorted((gamma_to_noise_level(lo) for lo, _, _ in pieces(expert)[1:]), reverse=True)
    if schedule == "inserted" or not switches or steps < 3:  # "split" needs an interior level to move
        return sorted(set(levels) | set(switches), reverse=True) + [0.0]
    # where each switch falls in EDM's spacing (0 at s_max, steps - 1 at s_min), rounded to an interior level
    position = [(s ** (1 / rho) - s_max ** (1 / rho)) / (s_min ** (1 / rho) - s_max ** (1 / rho)) * (steps - 1)
                for s in switches]
    anchors = [min(max(round(p), 1), steps - 2) for p in position]
    if len(set(anchors)) < len(anchors) or anchors != sorted(anchors):  # more switches than levels: insert them
        return sorted(set(levels) | set(switches), reverse=True) + [0.0]
    ends = [(0, s_max), *zip(anchors, switches), (steps - 1, s_min)]
    split = [s_max]
    for (i, a), (j, b) in zip(ends[:-1], ends[1:]):
        split += _rho_levels(a, b, j - i, rho)[1:]
    return split + [0.0]


def _step_expert(expert, gamma_from: float):
    """The single expert that serves a step going down from gamma_from (the piece just below it)."""
    for lo, hi, piece in pieces(expert):
        if lo < gamma_from <= hi + 1e-9:
            return piece
    return pieces(expert)[0][2]


def sample_heun(expert, seeds, shape, *, steps: int = 18, rho: float = 7.0, schedule: str = "split",
                noise_levels=None, batch_size: int = 64, device=None) -> SampleRecord:
    """EDM Algorithm 1 (deterministic Heun, rho = 7); no step straddles two experts. As NVlabs' `edm_sampler`,
    it starts from x = s_max n (not the VP prior's sqrt(1 + s_max^2) n) and keeps its state in float64.

    `noise_levels` (decreasing, ending in 0) overrides the schedule `heun_noise_levels(expert, steps, rho,
    schedule)`.
    """
    levels = (heun_noise_levels(expert, steps, rho, schedule) if noise_levels is None
              else [float(s) for s in noise_levels])
    if len(levels) < 2 or levels[-1] != 0 or any(b >= a for a, b in zip(levels[:-1], levels[1:])):
        raise ValueError("noise_levels must decrease strictly and end in 0")

    def batch(expert, seeds, generators, shape, device):
        x, calls = levels[0] * _normal(generators, shape, device).double(), 0  # NVlabs: x = sigma_max n, float64
        for s_cur, s_next in zip(levels[:-1], levels[1:]):
            step_expert = _step_expert(expert, 2 * math.log(s_cur))
            d = (x - _denoised(step_expert, x.float(), s_cur, seeds).double()) / s_cur
            x_next = x + (s_next - s_cur) * d
            calls += 1
            if s_next > 0:  # second-order correction, skipped on the final step to 0
                d_next = (x_next - _denoised(step_expert, x_next.float(), s_next, seeds).double()) / s_next
                x_next = x + (s_next - s_cur) * (d + d_next) / 2
                calls += 1
            x = x_next
        return x, calls

    return _in_batches(batch, expert, seeds, shape, batch_size, device)


def sample_ancestral(expert, seeds, shape, *, steps: int = 256, clip_denoised: bool = True, batch_size: int = 64,
                     device=None) -> SampleRecord:
    """VDM's ancestral sampler on a linear gamma grid, in VE coordinates:
    x_s = x_t - c (x_t - D(x_t; s_t)) + s_s sqrt(c) n,  c = 1 - exp(gamma_s - gamma_t).
    `clip_denoised` clips D to [-1, 1] first, as the VDM re-implementation's `clip_samples` does (the default,
    as in the pipeline; data not scaled to [-1, 1], such as a test's Gaussian, need clip_denoised=False)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")

    def batch(expert, seeds, generators, shape, device):
        x = _prior(expert, generators, shape, device)
        return ancestral_steps(expert, x, generators, seeds, steps, steps, 0, clip_denoised), steps

    return _in_batches(batch, expert, seeds, shape, batch_size, device)


def ancestral_steps(expert, x: torch.Tensor, generators, seeds, steps: int, first: int, last: int,
                    clip_denoised: bool = True, gamma_range=None) -> torch.Tensor:
    """Steps i = first, first - 1, ..., last + 1 of the ancestral sampler's `steps` on the linear gamma grid over
    `gamma_range` (default the expert's), each drawing its noise from the images' generators after D: a run
    cut at any step and continued from its state and generators is the uncut run, bit for bit."""
    gamma_min, gamma_max = map(float, gamma_range or (expert.gamma_min, expert.gamma_max))
    for i in range(first, last, -1):
        gamma_t = linear_gamma(i / steps, gamma_min, gamma_max)
        gamma_s = linear_gamma((i - 1) / steps, gamma_min, gamma_max)
        c = -math.expm1(gamma_s - gamma_t)
        denoised = _denoised(expert, x, gamma_to_noise_level(gamma_t), seeds)
        denoised = denoised.clamp(-1, 1) if clip_denoised else denoised
        noise = _normal(generators, x.shape[1:], x.device)
        x = x - c * (x - denoised) + gamma_to_noise_level(gamma_s) * math.sqrt(c) * noise
    return x

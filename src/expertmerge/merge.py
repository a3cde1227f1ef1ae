"""Merging experts by noise level (paper Sec. 3-4, Eq. 14-15).

All positions are on the merged range's linear clock: gamma_eta = gamma_0 + eta (gamma_1 - gamma_0),
gamma_0 = min of the experts' gamma_min, gamma_1 = max of their gamma_max (Eq. 14).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .experts.base import Expert, broadcast_level, check_expert
from .noise import feasible_etas, linear_gamma


def merged_range(experts: Sequence) -> tuple[float, float]:
    return min(float(e.gamma_min) for e in experts), max(float(e.gamma_max) for e in experts)


def common_image_shape(experts: Sequence) -> tuple | None:
    """The (C, H, W) that experts recording an `image_shape` work on (None if none does); a merge of
    experts made for different shapes is refused."""
    shapes = {tuple(map(int, e.image_shape)) for e in experts if getattr(e, "image_shape", None) is not None}
    if len(shapes) > 1:
        raise ValueError(f"the experts work on images of different shapes "
                         f"{', '.join('x'.join(map(str, shape)) for shape in sorted(shapes))} (C x H x W); "
                         f"a merge needs experts of one shape")
    return shapes.pop() if shapes else None


def eta_range(quality, likelihood) -> tuple[float, float]:
    """Feasible (eta_min, eta_max) for switching from `quality` (high noise) to `likelihood` (Eq. 15).

    The likelihood expert must cover [gamma_0, gamma_eta], the quality expert [gamma_eta, gamma_1].
    """
    experts = [check_expert(likelihood, "likelihood expert"), check_expert(quality, "quality expert")]
    return feasible_etas([(e.gamma_min, e.gamma_max) for e in experts])[0]


def _as_eta(eta) -> float:
    try:
        return float(eta)
    except (TypeError, ValueError):
        raise TypeError(f"switch level eta must be a number in [0, 1], got {eta!r}") from None


class PiecewiseExpert(Expert):
    """Experts on consecutive gamma intervals: experts[k] serves [boundaries[k-1], boundaries[k]).

    A hard switch: each sample is denoised by the one expert that owns its noise level; a
    batch whose samples sit at different levels is split between the experts.
    """

    def __init__(self, experts: Sequence, boundaries: Sequence[float]):
        self.experts, self.boundaries = list(experts), [float(b) for b in boundaries]
        self.gamma_min, self.gamma_max = merged_range(self.experts)
        self.image_shape = common_image_shape(self.experts)

    @property
    def pieces(self) -> list[tuple[float, float, object]]:
        edges = [self.gamma_min, *self.boundaries, self.gamma_max]
        return [(edges[k], edges[k + 1], e) for k, e in enumerate(self.experts)]

    def owner(self, gamma: torch.Tensor) -> torch.Tensor:
        """Index of the expert serving each gamma; a boundary belongs to the higher-noise expert."""
        inner = torch.tensor(self.boundaries, dtype=gamma.dtype, device=gamma.device)
        return torch.searchsorted(inner, gamma.contiguous(), right=True)

    def _denoise(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        owner = self.owner(2 * torch.log(s))
        first = int(owner[0])
        if bool(torch.all(owner == first)):  # the common case: the whole batch at one level
            return self.experts[first].denoise(x, s)
        out = torch.empty_like(x)
        for k in torch.unique(owner).tolist():
            rows = torch.nonzero(owner == k).squeeze(1)
            out[rows] = self.experts[k].denoise(x[rows], s[rows])
        return out


def switch_many(experts: Sequence, etas: Sequence[float]) -> PiecewiseExpert:
    """N experts ordered from low to high noise, switching at N-1 increasing levels `etas`."""
    experts = [check_expert(e, f"expert {k}") for k, e in enumerate(experts)]
    if len(etas) != len(experts) - 1:
        raise ValueError(f"{len(experts)} experts need {len(experts) - 1} switch levels, got {len(etas)}")
    gamma_0, gamma_1 = merged_range(experts)
    etas = [_as_eta(eta) for eta in etas]
    if any(b < a for a, b in zip(etas[:-1], etas[1:])):
        raise ValueError(f"switch levels must increase from low to high noise, got {list(etas)}")
    for k, (eta, (lo, hi)) in enumerate(zip(etas, feasible_etas([(e.gamma_min, e.gamma_max) for e in experts]))):
        if not (math.isfinite(eta) and lo - 1e-12 <= eta <= hi + 1e-12):
            raise ValueError(f"switch level eta={eta!r} between expert {k} and {k + 1} is outside the feasible "
                             f"range [{lo:.4f}, {hi:.4f}] (Eq. 15, merged gamma range [{gamma_0:.4g}, {gamma_1:.4g}])")
    return PiecewiseExpert(experts, [linear_gamma(eta, gamma_0, gamma_1) for eta in etas])


def switch(quality, likelihood, eta: float) -> PiecewiseExpert:
    """The paper's hard switch: `quality` serves gamma >= gamma_eta, `likelihood` gamma < gamma_eta."""
    return switch_many([likelihood, quality], [eta])


class BlendedExpert(Expert):
    """A convex blend over [gamma_lo, gamma_hi]: weight w of `high` rises linearly from 0 to 1.

    Blending D is blending the scores (D - x)/s^2 with the same weights. Outside the window
    only one expert is evaluated.
    """

    def __init__(self, low, high, gamma_lo: float, gamma_hi: float):
        self.low, self.high, self.gamma_lo, self.gamma_hi = low, high, float(gamma_lo), float(gamma_hi)
        self.gamma_min, self.gamma_max = merged_range([low, high])
        self.image_shape = common_image_shape([low, high])

    def _denoise(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        weight = ((2 * torch.log(s) - self.gamma_lo) / (self.gamma_hi - self.gamma_lo)).clamp(0, 1)
        if bool(torch.all(weight == 0)):
            return self.low.denoise(x, s)
        if bool(torch.all(weight == 1)):
            return self.high.denoise(x, s)
        out = torch.empty_like(x)
        only_low, only_high = weight == 0, weight == 1
        mixed = ~(only_low | only_high)
        for rows, expert in ((only_low, self.low), (only_high, self.high)):
            if bool(rows.any()):
                out[rows] = expert.denoise(x[rows], s[rows])
        w = broadcast_level(weight[mixed], x)
        out[mixed] = (1 - w) * self.low.denoise(x[mixed], s[mixed]) + w * self.high.denoise(x[mixed], s[mixed])
        return out


def blend(quality, likelihood, eta: float, window: float) -> BlendedExpert:
    """Blend over a gamma window of width `window` centred on gamma_eta; both experts must cover it."""
    likelihood, quality = check_expert(likelihood, "likelihood expert"), check_expert(quality, "quality expert")
    (lo, hi), = feasible_etas([(e.gamma_min, e.gamma_max) for e in (likelihood, quality)])
    gamma_0, gamma_1 = merged_range([likelihood, quality])
    if not (math.isfinite(window) and window > 0):
        raise ValueError(f"blend window must be a positive width in gamma, got {window!r}")
    eta = _as_eta(eta)
    centre = linear_gamma(eta, gamma_0, gamma_1) if math.isfinite(eta) else math.nan
    g_lo, g_hi = centre - window / 2, centre + window / 2
    if not (linear_gamma(lo, gamma_0, gamma_1) <= g_lo and g_hi <= linear_gamma(hi, gamma_0, gamma_1)):
        raise ValueError(f"blend window [{g_lo:.4g}, {g_hi:.4g}] around eta={eta!r} leaves the range where both "
                         f"experts are valid, eta in [{lo:.4f}, {hi:.4f}] (Eq. 15)")
    return BlendedExpert(likelihood, quality, g_lo, g_hi)


def pieces(expert) -> list[tuple[float, float, object]]:
    """(gamma_lo, gamma_hi, expert) intervals served by single experts; one piece for a plain expert."""
    if isinstance(expert, PiecewiseExpert):
        return expert.pieces
    return [(float(expert.gamma_min), float(expert.gamma_max), expert)]

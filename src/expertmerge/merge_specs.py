"""A named merge's denoiser (issue 24): experts from high noise to low, handing over at hard switches or across
blend windows (`merge_plan` describes and checks them)."""
from __future__ import annotations

from typing import Sequence

import torch

from .experts.base import Expert, broadcast_level, check_expert
from .merge import common_image_shape, merged_range
from .merge_plan import Switch, check_merge
from .noise import linear_gamma


class ChainedExpert(Expert):
    """Experts from low to high noise with a window between each two neighbours: below a window the lower expert
    serves, above it the higher; inside, D = (1 - w) D_low + w D_high with w rising linearly in gamma (blending D
    blends the scores with the same weights). A window of zero width is a hard switch whose level belongs to the
    higher-noise expert, as in `merge.PiecewiseExpert`. Each row is evaluated only by the experts it needs."""

    def __init__(self, experts: Sequence, windows: Sequence[tuple[float, float]]):
        self.experts, self.windows = list(experts), [(float(lo), float(hi)) for lo, hi in windows]
        self.gamma_min, self.gamma_max = merged_range(self.experts)
        self.image_shape = common_image_shape(self.experts)

    def weights(self, gamma: torch.Tensor) -> torch.Tensor:
        """[N, K]: each expert's weight at each row's gamma (rows sum to 1)."""
        weights = torch.zeros(gamma.shape[0], len(self.experts), dtype=torch.float64, device=gamma.device)
        weights[:, 0] = 1
        for k, (lo, hi) in enumerate(self.windows):  # hand from expert k to k + 1 across the window
            rise = (gamma >= hi).double() if hi == lo else ((gamma.double() - lo) / (hi - lo)).clamp(0, 1)
            weights[:, k + 1] = weights[:, k] * rise  # the part of the earlier experts' weight that moves up
            weights[:, k] = weights[:, k] * (1 - rise)
        return weights

    def _denoise(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        weights = self.weights(2 * torch.log(s))
        out = torch.zeros_like(x)
        for k, expert in enumerate(self.experts):
            rows = torch.nonzero(weights[:, k] > 0).squeeze(1)
            if rows.numel() == x.shape[0] and bool(torch.all(weights[:, k] == 1)):
                return expert.denoise(x, s)  # the common case: the whole batch with one expert
            if rows.numel():
                w = broadcast_level(weights[rows, k], x)
                out[rows] += w * expert.denoise(x[rows], s[rows])
        return out


def build_merge(experts: Sequence, switches: Sequence[Switch], names: Sequence[str] | None = None) -> ChainedExpert:
    """The merge of `experts` (high noise to low) handing over at `switches` (high to low), checked first."""
    experts = [check_expert(e, f"expert {k}") for k, e in enumerate(experts)]
    names = list(names) if names is not None else [f"expert {k}" for k in range(len(experts))]
    check_merge(names, switches, {name: (e.gamma_min, e.gamma_max) for name, e in zip(names, experts)})
    gamma_0, gamma_1 = merged_range(experts)
    windows = [(linear_gamma(s.low, gamma_0, gamma_1), linear_gamma(s.high, gamma_0, gamma_1)) for s in switches]
    return ChainedExpert(experts[::-1], windows[::-1])

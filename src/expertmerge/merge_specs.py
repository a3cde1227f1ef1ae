"""Named merges of any number of experts (issue 24): what config.yaml's `merges` describe.

A merge lists its experts from high noise to low, as a sampler meets them, and one switch between each two:
a hard switch at eta (a number), or a blend over a window [eta_a, eta_b] (`{"blend": [eta_a, eta_b]}`), where
the denoiser moves linearly in gamma from the lower expert's to the higher one's. Positions are on the merged
clock of all the merge's experts (Eq. 14). A merge is checked before any work: each expert must be valid on
every level it serves, a blend's two experts on the whole window (Eq. 15, for each pair of neighbours).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from .experts.base import Expert, broadcast_level, check_expert
from .merge import common_image_shape, merged_range
from .noise import feasible_etas, linear_gamma


@dataclass(frozen=True)
class Switch:
    """Where two neighbouring experts hand over, on the merged clock: a hard switch when low == high."""
    low: float
    high: float

    def describe(self) -> str:
        return f"{self.low:g}" if self.low == self.high else f"a blend over [{self.low:g}, {self.high:g}]"


def parse_switch(value) -> Switch:
    """A number (a hard switch at eta) or {"blend": [eta_a, eta_b]} with eta_a < eta_b, each in [0, 1]."""
    if isinstance(value, dict) and set(value) == {"blend"}:
        window = value["blend"]
        if not (isinstance(window, (list, tuple)) and len(window) == 2):
            raise ValueError(f"a blend is {{blend: [eta_a, eta_b]}}, got {value!r}")
        low, high = (_eta(v) for v in window)
        if not low < high:
            raise ValueError(f"a blend window [eta_a, eta_b] needs eta_a < eta_b, got {list(window)}")
        return Switch(low, high)
    eta = _eta(value)
    return Switch(eta, eta)


def _eta(value) -> float:
    if isinstance(value, bool):
        value = math.nan
    try:
        eta = float(value)
    except (TypeError, ValueError):
        eta = math.nan
    if not 0 <= eta <= 1:  # also refuses NaN
        raise ValueError(f"a switch level is a number in [0, 1] or {{blend: [eta_a, eta_b]}}, got {value!r}")
    return eta


def check_merge(names: Sequence[str], switches: Sequence[Switch], ranges: dict) -> None:
    """Refuse, in one line, a merge whose experts (`names`, high noise to low, with gamma `ranges` by name) do not
    cover the levels they serve, or whose switches do not descend from high noise to low without overlapping."""
    names = list(names)
    if len(names) < 2:
        raise ValueError(f"a merge needs at least two experts, got {names}")
    if len(switches) != len(names) - 1:
        raise ValueError(f"a merge of {len(names)} experts ({', '.join(names)}) needs {len(names) - 1} switches, "
                         f"got {len(switches)}")
    for above, below in zip(switches[:-1], switches[1:]):
        if not below.high <= above.low:
            raise ValueError(f"switches run from high noise to low and may not overlap: {below.describe()} follows "
                             f"{above.describe()}")
    low_to_high = names[::-1]
    feasible = feasible_etas([ranges[name] for name in low_to_high])  # each neighbouring pair, low to high
    for k, (switch, (lo, hi)) in enumerate(zip(switches[::-1], feasible)):
        if not (lo - 1e-12 <= switch.low and switch.high <= hi + 1e-12):
            lower, upper = low_to_high[k], low_to_high[k + 1]
            raise ValueError(f"the switch from {upper} to {lower} at {switch.describe()} leaves the levels where both "
                             f"are valid, eta in [{lo:.4f}, {hi:.4f}] (Eq. 15; {upper}: gamma {_range(ranges[upper])}, "
                             f"{lower}: gamma {_range(ranges[lower])})")


def _range(bounds) -> str:
    return f"[{bounds[0]:.4g}, {bounds[1]:.4g}]"


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

"""Valid noise ranges and feasible switch levels in plain Python (no torch), so that the workflow can
check a config without importing torch: the family constants and Eq. 15.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

# EDM's sampling range sigma in [0.002, 80] (Karras et al. 2022, Table 1).
EDM_SIGMA_MIN = 0.002
EDM_SIGMA_MAX = 80.0
# VDM's fixed linear schedule (Kingma et al. 2021), paper Sec. 4.1.
VDM_GAMMA_MIN = -13.3
VDM_GAMMA_MAX = 5.0


def gamma_of_noise_level(noise_level: float) -> float:
    """gamma = 2 log s for a float noise level."""
    return 2 * math.log(noise_level)


def eta_to_gamma(eta: float, gamma_0: float, gamma_1: float) -> float:
    """The merged clock's gamma at eta: gamma_eta = gamma_0 + eta (gamma_1 - gamma_0) (Eq. 14)."""
    return gamma_0 + eta * (gamma_1 - gamma_0)


def gamma_to_eta(gamma: float, gamma_0: float, gamma_1: float) -> float:
    """The eta at which the merged clock reaches `gamma` (the inverse of eta_to_gamma)."""
    return (gamma - gamma_0) / (gamma_1 - gamma_0)


def feasible_etas(gamma_ranges: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """For experts with these gamma ranges (low to high noise), the feasible (eta_lo, eta_hi) of each switch."""
    ranges = [(float(lo), float(hi)) for lo, hi in gamma_ranges]
    gamma_0, gamma_1 = min(lo for lo, _ in ranges), max(hi for _, hi in ranges)
    describe = ", ".join(f"[{lo:.4g}, {hi:.4g}]" for lo, hi in ranges)
    if ranges[0][0] > gamma_0 or ranges[-1][1] < gamma_1:
        raise ValueError(f"cannot merge experts with gamma ranges {describe} (low to high noise): the "
                         "lowest-noise expert must reach the lowest gamma and the highest-noise expert the highest")
    feasible = []
    for low, high in zip(ranges[:-1], ranges[1:]):
        lo, hi = max(high[0], gamma_0), min(low[1], gamma_1)
        if lo > hi:
            raise ValueError(f"experts with gamma ranges [{low[0]:.4g}, {low[1]:.4g}] and [{high[0]:.4g}, "
                             f"{high[1]:.4g}] do not overlap: no switch level is feasible")
        feasible.append(((lo - gamma_0) / (gamma_1 - gamma_0), (hi - gamma_0) / (gamma_1 - gamma_0)))
    return feasible

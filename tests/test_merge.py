"""Merging by noise level: feasible range (Eq. 15), ownership of noise levels, blends, N experts."""
import math

import numpy as np
import pytest
import torch

from expertmerge.experts import GaussianExpert
from expertmerge.merge import blend, eta_range, switch, switch_many
from expertmerge.experts.registry import get_family

from conftest import Spy, gaussian_data


def expert_on(gamma_min, gamma_max):
    mean, cov = gaussian_data()
    return GaussianExpert(mean, cov, gamma_min, gamma_max)


QUALITY = expert_on(*get_family("edm").gamma_range)   # EDM's range
LIKELIHOOD = expert_on(-13.3, 5.0)        # VDM's range


def test_eta_range_for_the_paper_ranges():
    eta_min, eta_max = eta_range(QUALITY, LIKELIHOOD)
    assert eta_min == pytest.approx(0.0394, abs=1e-4)
    assert eta_max == pytest.approx(0.8294, abs=1e-4)
    assert eta_range(LIKELIHOOD, LIKELIHOOD) == (0.0, 1.0)


@pytest.mark.parametrize("eta", [0.0, 0.03, 0.83, 1.0, math.nan, math.inf])
def test_infeasible_eta_names_the_range(eta):
    with pytest.raises(ValueError, match=r"feasible range \[0\.0395, 0\.8294\]"):
        switch(QUALITY, LIKELIHOOD, eta)


def test_experts_that_cannot_be_merged():
    with pytest.raises(ValueError, match="do not overlap"):
        eta_range(expert_on(1.0, 8.0), expert_on(-13.0, 0.0))
    with pytest.raises(ValueError, match="lowest-noise expert"):
        eta_range(LIKELIHOOD, QUALITY)  # arguments swapped: quality cannot reach gamma = -13.3


def test_switch_range_and_ownership():
    quality, likelihood = Spy(QUALITY), Spy(LIKELIHOOD)
    merged = switch(quality, likelihood, 0.5)
    assert (merged.gamma_min, merged.gamma_max) == (-13.3, QUALITY.gamma_max)
    gamma_eta = -13.3 + 0.5 * (QUALITY.gamma_max + 13.3)
    gammas = torch.linspace(merged.gamma_min, merged.gamma_max, 41, dtype=torch.float64)
    x = torch.zeros(41, 1, 2, 2)
    out = merged.denoise(x, torch.exp(gammas / 2))  # one batch spanning both experts: split between them
    assert quality.calls == 1 and likelihood.calls == 1
    assert quality.rows + likelihood.rows == 41  # each sample evaluated by exactly one expert
    assert min(quality.gammas) >= gamma_eta and max(likelihood.gammas) < gamma_eta
    torch.testing.assert_close(out, QUALITY.denoise(x, torch.exp(gammas / 2)))
    quality.gammas.clear()
    merged.denoise(x[:3], math.exp(gamma_eta / 2 + 1e-9))  # a whole batch at one level: one expert only
    assert quality.calls == 2 and likelihood.calls == 1


def test_blend_is_convex_and_local():
    shifted = GaussianExpert(QUALITY.mean + 1.0, QUALITY.cov, *get_family("edm").gamma_range)
    quality, likelihood = Spy(shifted), Spy(LIKELIHOOD)
    blended = blend(quality, likelihood, 0.5, window=2.0)
    centre = -13.3 + 0.5 * (QUALITY.gamma_max + 13.3)
    gammas = torch.tensor([centre - 3, centre - 1, centre, centre + 1, centre + 3], dtype=torch.float64)
    x = torch.zeros(5, 1, 2, 2)
    s = torch.exp(gammas / 2)
    out = blended.denoise(x, s)
    low, high = LIKELIHOOD.denoise(x, s), shifted.denoise(x, s)
    weight = torch.tensor([0, 0, 0.5, 1, 1]).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(out, (1 - weight) * low + weight * high)
    assert quality.rows == 3 and likelihood.rows == 3  # both evaluated only at the window's centre
    with pytest.raises(ValueError, match="leaves the range"):
        blend(QUALITY, LIKELIHOOD, 0.05, window=2.0)


def test_three_experts_over_two_switch_levels():
    spies = [Spy(expert_on(-13.3, 0.0)), Spy(expert_on(-5.0, 5.0)), Spy(expert_on(-1.0, 8.764))]
    merged = switch_many(spies, [0.45, 0.65])
    gammas = torch.linspace(-13.3, 8.764, 60, dtype=torch.float64)
    merged.denoise(torch.zeros(60, 1, 2, 2), torch.exp(gammas / 2))
    g1, g2 = -13.3 + 0.45 * 22.064, -13.3 + 0.65 * 22.064
    assert max(spies[0].gammas) < g1 <= min(spies[1].gammas)
    assert max(spies[1].gammas) < g2 <= min(spies[2].gammas)
    with pytest.raises(ValueError, match="increase"):
        switch_many(spies, [0.6, 0.5])
    with pytest.raises(ValueError, match="need 2 switch levels"):
        switch_many(spies, [0.5])


def test_a_three_way_switch_of_gaussian_experts_is_the_piecewise_exact_denoiser():
    """Three Gaussian experts of different data, switched at eta 0.3 and 0.6 (low to high noise): at every
    level the merge's D is the exact denoiser of the expert that owns it, and nothing else."""
    mean, cov = gaussian_data()
    experts = [GaussianExpert(mean + shift, cov * scale, -13.3, 8.764) for shift, scale in ((0.0, 1.0), (0.3, 0.5), (-0.2, 2.0))]
    merged = switch_many(experts, [0.3, 0.6])
    cut = [-13.3 + eta * (8.764 + 13.3) for eta in (0.3, 0.6)]
    generator = torch.Generator().manual_seed(0)
    for gamma in np.linspace(-13.0, 8.5, 12):
        owner = experts[int(gamma >= cut[0]) + int(gamma >= cut[1])]
        x = torch.randn(5, *mean.shape, generator=generator)
        s = float(np.exp(gamma / 2))
        torch.testing.assert_close(merged.denoise(x, s), owner.denoise(x, s), rtol=0, atol=0)
    with pytest.raises(ValueError, match="outside the feasible"):
        switch_many([experts[0], GaussianExpert(mean, cov, 0.0, 8.764), experts[2]], [0.3, 0.6])  # cannot serve 0.3

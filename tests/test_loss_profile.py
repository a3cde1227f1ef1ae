"""The per-noise-level loss L(gamma) on exact Gaussian experts: closed forms, the VLB's diffusion term,
batch invariance, shared noise across sub-grids, refusal outside an expert's range."""
import math

import numpy as np
import pytest
import torch

from expertmerge.experts import GaussianExpert
from expertmerge.images import from_uint8
from expertmerge.likelihood import vlb
from expertmerge.loss_profile import (crossings, diffusion_term_bpd, in_range, loss_profile, loss_profile_of_data,
                                      mean_and_standard_error, piece_integral, predicted_vlb, profile_grid,
                                      profile_records)
from expertmerge.merge import pieces, switch, switch_many

from conftest import gaussian_data
from test_likelihood import Model, make_expert, quantised_samples

SHAPE = (1, 2, 2)
V = torch.tensor([0.01, 0.05, 0.2, 0.5], dtype=torch.float64)   # data variances
W = torch.tensor([0.02, 0.03, 0.4, 0.3], dtype=torch.float64)   # variances a mis-specified expert assumes
GAMMAS = [-10.0, -4.0, -1.0, 1.0, 3.0, 5.0]


def diagonal_expert(variances, gamma_min=-13.3, gamma_max=5.0):
    return GaussianExpert(torch.zeros(SHAPE), torch.diag(variances), gamma_min, gamma_max)


def gaussian_images(n, seed=0):
    """x ~ N(0, diag V) as float NCHW."""
    generator = torch.Generator().manual_seed(seed)
    return (V.sqrt() * torch.randn(n, V.numel(), generator=generator, dtype=torch.float64)).reshape(n, *SHAPE)


def expected_loss(data_variances, expert_variances, gamma):
    """E L for D(x) = W/(W + s^2) x on x = x0 + s eps, x0 ~ N(0, diag V):
    (D - x0)/s = -s x0/(W + s^2) + W eps/(W + s^2), so E = mean_i (s^2 V_i + W_i^2)/(W_i + s^2)^2."""
    s2 = math.exp(gamma)
    return ((s2 * data_variances + expert_variances**2) / (expert_variances + s2) ** 2).mean().item()


@pytest.mark.parametrize("expert_variances", [V, W], ids=["exact", "mis-specified"])
def test_mean_loss_matches_the_closed_form(expert_variances):
    loss = loss_profile_of_data(diagonal_expert(expert_variances), gaussian_images(4000), GAMMAS, batch_size=1000)
    mean, error = mean_and_standard_error(loss)
    expected = [expected_loss(V, expert_variances, gamma) for gamma in GAMMAS]
    assert np.all(np.abs(mean - expected) < 4 * error), (mean, expected, error)
    if expert_variances is V:  # the exact denoiser's loss is (1/D) sum V/(V + s^2)
        assert expected == pytest.approx([(V / (V + math.exp(g))).mean().item() for g in GAMMAS])


def test_diffusion_term_agrees_with_the_vlb_and_its_closed_form():
    expert, n = make_expert(), 8000
    images = quantised_samples(expert, n, seed=5)
    gammas = profile_grid(expert.gamma_min, expert.gamma_max, 184)  # step 0.1
    profile = diffusion_term_bpd(gammas, loss_profile(expert, images, gammas, batch_size=n))  # one value per image
    closed_form = Model(expert).diffusion_bpd(from_uint8(images)).numpy()
    assert abs((profile - closed_form).mean()) < 4 * (profile - closed_form).std() / math.sqrt(n)
    bound = vlb(expert, images, batch_size=n).diffusion.numpy()
    error = math.hypot(profile.std(), bound.std()) / math.sqrt(n)
    assert abs(profile.mean() - bound.mean()) < 4 * error and error < 0.01 * profile.mean()


def test_trapezoid_integral_of_a_known_curve():
    gammas = profile_grid(-13.3, 5.0, 733)  # step 0.025
    curve = 1 / (1 + np.exp(gammas))  # int 1/(1 + e^g) dg = g - log(1 + e^g)
    exact = (5.0 - math.log1p(math.exp(5.0)) + 13.3 + math.log1p(math.exp(-13.3))) / (2 * math.log(2))
    assert diffusion_term_bpd(gammas, curve) == pytest.approx(exact, abs=1e-4)
    assert diffusion_term_bpd(gammas, np.stack([curve, 2 * curve])) == pytest.approx([exact, 2 * exact], abs=2e-4)


def test_result_does_not_depend_on_the_batch():
    expert, data = diagonal_expert(W), gaussian_images(10)
    alone = loss_profile_of_data(expert, data, GAMMAS, batch_size=1)
    together = loss_profile_of_data(expert, data, GAMMAS, batch_size=7)
    assert alone.shape == (10, len(GAMMAS)) and alone.dtype == torch.float64
    assert torch.equal(alone, together)
    shifted = loss_profile_of_data(expert, data[3:], GAMMAS, seeds=range(3, 10), batch_size=4)
    assert torch.equal(shifted, alone[3:])  # image j's noise comes from seed j wherever it sits


def test_a_sub_grid_sees_the_noise_of_the_full_grid():
    data = gaussian_images(6)
    gammas = profile_grid(-13.3, 8.0, 12)
    narrow = diagonal_expert(V, gamma_max=5.0)
    inside = gammas <= 5.0
    part = loss_profile_of_data(narrow, data, gammas, evaluate=inside)
    assert torch.isnan(part[:, ~inside]).all()
    full = loss_profile_of_data(diagonal_expert(V, gamma_max=8.0), data, gammas)
    assert torch.equal(part[:, inside], full[:, inside])  # the same eps at the same gamma


def test_gammas_outside_the_range_are_refused():
    expert, data = diagonal_expert(V), gaussian_images(2)
    with pytest.raises(ValueError, match=r"gamma \[6.0\] outside the expert's range \[-13.3, 5\]"):
        loss_profile_of_data(expert, data, [0.0, 6.0])
    with pytest.raises(ValueError, match="one flag per gamma"):
        loss_profile_of_data(expert, data, [0.0, 1.0], evaluate=[True])
    with pytest.raises(ValueError, match="at least 2 points"):
        profile_grid(0.0, 1.0, 1)


def test_grid_ends_and_crossings():
    grid = profile_grid(-13.3, 8.764, 89)
    assert grid[0] == -13.3 and grid[-1] == 8.764 and np.allclose(np.diff(grid), 22.064 / 88)
    gammas = np.array([0.0, 1.0, 2.0, 3.0])
    rising, flat = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.5, 1.5, 1.5, np.nan])
    assert crossings(gammas, rising, flat) == [(1.5, 1.5)]
    assert crossings(gammas, flat, flat + 1) == []


def test_records_drop_unmeasured_gammas():
    loss = torch.tensor([[1.0, math.nan], [3.0, math.nan]], dtype=torch.float64)
    (record,) = profile_records([0.0, 1.0], loss)
    assert {key: record[key] for key in ("gamma", "loss", "standard_error", "images")} == {
        "gamma": 0.0, "loss": 2.0, "standard_error": 1.0, "images": 2}
    assert math.isnan(record["difference"]) and math.isnan(record["difference_standard_error"])  # nothing paired


def test_the_paired_difference_is_the_mean_and_standard_error_of_per_image_differences():
    quality = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 1.0]], dtype=torch.float64)
    likelihood = torch.tensor([[0.5, math.nan], [2.0, math.nan], [5.5, math.nan]], dtype=torch.float64)  # out of range at 1
    records = profile_records([0.0, 1.0], quality, (quality, likelihood))
    assert [r["difference"] for r in records] == pytest.approx([(0.5 + 1.0 - 0.5) / 3, math.nan], nan_ok=True)
    assert records[0]["difference_standard_error"] == pytest.approx(np.std([0.5, 1.0, -0.5], ddof=1) / math.sqrt(3))


def test_a_correlated_gaussian_gives_its_eigenvalue_formula():
    mean, cov = gaussian_data(SHAPE, seed=1)
    expert = GaussianExpert(mean, cov, -13.3, 5.0)
    generator = torch.Generator().manual_seed(3)
    data = mean + (torch.randn(3000, 4, generator=generator, dtype=torch.float64)
                   @ torch.linalg.cholesky(cov).T).reshape(3000, *SHAPE)
    loss = loss_profile_of_data(expert, data, [0.0], batch_size=3000)
    lam = expert.eigenvalues
    mean_loss, error = mean_and_standard_error(loss)
    assert abs(mean_loss[0] - (lam / (lam + 1.0)).mean().item()) < 4 * error[0]


def test_piece_integrals_interpolate_between_grid_points():
    gammas = np.linspace(-2.0, 2.0, 5)
    line = 3 * gammas + 1  # piecewise-linear interpolation is exact for a line
    assert piece_integral(gammas, line, -1.5, 0.25) == pytest.approx((1.5 * 0.25**2 + 0.25) - (1.5 * 1.5**2 - 1.5))
    with pytest.raises(ValueError, match="not over the piece"):
        piece_integral(gammas, np.where(gammas < 0, np.nan, line), -1.0, 1.0)


def test_predicted_vlb_equals_the_measured_vlb_of_single_experts_and_merges():
    """The VLB is prior + reconstruction + 1/(2 ln 2) int L dgamma, so each expert's curve, measured once,
    predicts the VLB of the expert alone and of every merge (Eq. 6-7), within Monte Carlo error."""
    exact, n = make_expert(), 2000
    wrong = GaussianExpert(exact.mean + 0.2, exact.cov, -12.43, 8.764)  # a mis-specified "quality" expert
    third = GaussianExpert(exact.mean - 0.1, exact.cov * 1.2, -13.3, 8.764)  # a third, for a three-way merge
    images = quantised_samples(exact, n, seed=9)
    gammas = np.union1d(profile_grid(-13.3, 8.764, 221), [-12.43, 5.0])  # a step of 0.1 and both experts' ends
    curves = {id(e): mean_and_standard_error(loss_profile(e, images, gammas, evaluate=in_range(e, gammas),
                                                          batch_size=n))[0] for e in (exact, wrong, third)}
    three_way = switch_many([exact, third, wrong], [0.3, 0.6])  # low to high noise
    for model in (exact, wrong, switch(wrong, exact, 0.3), switch(wrong, exact, 0.7), three_way):
        predicted = predicted_vlb(images, gammas, [(lo, hi, curves[id(e)]) for lo, hi, e in pieces(model)])
        measured = torch.stack([vlb(model, images, seed=run, batch_size=n).bpd for run in range(1, 5)]).mean(0)
        error = math.sqrt(2) * measured.std().item() / math.sqrt(n)  # the profile's noise is of the same size
        assert abs(predicted["vlb"] - measured.mean().item()) < 4 * error, (model, predicted, measured.mean())

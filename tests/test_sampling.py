"""Samplers on the exact Gaussian expert: right distribution, merging-invariance, batch-invariance, NFE."""
import functools
import math

import pytest
import torch

from expertmerge.experts import GaussianExpert
from expertmerge.merge import switch
from expertmerge.sampling import heun_noise_levels, sample_ancestral, sample_heun, sample_ode

from conftest import Spy

SHAPE = (1, 2, 2)


def assert_matches_data(x, expert):
    """Sample mean and covariance within ~5 standard errors of the data's."""
    n = x.shape[0]
    flat = x.reshape(n, -1).double()
    cov = expert.cov
    mean_error = (flat.mean(0) - expert.mean.reshape(-1)).abs()
    assert torch.all(mean_error < 5 * torch.sqrt(torch.diagonal(cov) / n)), mean_error
    cov_error = (torch.cov(flat.T) - cov).abs()
    cov_se = torch.sqrt((cov**2 + torch.outer(torch.diagonal(cov), torch.diagonal(cov))) / n)
    assert torch.all(cov_error < 5 * cov_se), cov_error / cov_se


# Heun at 40 steps: at EDM's 18 its O(h^2) bias on the 0.1-std direction is visible at 4000 samples
# (its convergence order is tested below).
@pytest.mark.parametrize("sampler", [sample_ode, functools.partial(sample_heun, steps=40),
                                     functools.partial(sample_ancestral, clip_denoised=False)],  # not [-1, 1] data
                         ids=["ode", "heun", "ancestral"])
def test_samples_follow_the_data(gaussian, sampler):
    record = sampler(gaussian, range(4000), SHAPE, batch_size=4000)
    assert record.x.dtype == torch.float32 and record.x.shape == (4000, *SHAPE)
    assert record.images.dtype == torch.uint8 and record.images.shape == (4000, 2, 2, 1)
    assert_matches_data(record.x, gaussian)


def test_heun_is_edm_algorithm_1(gaussian):
    levels = heun_noise_levels(gaussian, steps=18)
    assert len(levels) == 19 and levels[-1] == 0
    assert levels[0] == pytest.approx(math.exp(8.764 / 2)) and levels[-2] == pytest.approx(math.exp(-13.3 / 2))
    assert sample_heun(gaussian, [0], SHAPE).nfe.tolist() == [35]


def test_heun_converges_to_the_ode_at_second_order(gaussian):
    seeds = range(256)
    reference = sample_ode(gaussian, seeds, SHAPE, rtol=1e-7, atol=1e-7).x
    errors = [(sample_heun(gaussian, seeds, SHAPE, steps=n).x - reference).pow(2).mean().sqrt() for n in (25, 50, 100)]
    for coarse, fine in zip(errors[:-1], errors[1:]):
        assert 3.0 < coarse / fine < 6.0, errors  # halving the step divides the error by ~4


def test_merging_an_expert_with_itself_changes_nothing(gaussian):
    twin = GaussianExpert(gaussian.mean, gaussian.cov, gaussian.gamma_min, gaussian.gamma_max)
    merged = switch(gaussian, twin, 0.4)
    seeds = range(16)
    torch.testing.assert_close(sample_ode(merged, seeds, SHAPE).x, sample_ode(gaussian, seeds, SHAPE).x)
    torch.testing.assert_close(sample_ancestral(merged, seeds, SHAPE, steps=64).x,
                               sample_ancestral(gaussian, seeds, SHAPE, steps=64).x)
    levels = heun_noise_levels(merged, schedule="inserted")  # the switch level is an extra step boundary
    assert len(levels) == 20
    torch.testing.assert_close(sample_heun(merged, seeds, SHAPE, schedule="inserted").x,
                               sample_heun(gaussian, seeds, SHAPE, noise_levels=levels).x)
    split = heun_noise_levels(merged)  # the default: the switch takes a level's place
    assert len(split) == 19
    torch.testing.assert_close(sample_heun(merged, seeds, SHAPE).x,
                               sample_heun(gaussian, seeds, SHAPE, noise_levels=split).x)


def test_heun_steps_never_straddle_the_switch(gaussian):
    quality, likelihood = Spy(gaussian), Spy(GaussianExpert(gaussian.mean, gaussian.cov, -13.3, 5.0))
    merged = switch(quality, likelihood, 0.5)
    gamma_eta = -13.3 + 0.5 * (8.764 + 13.3)
    record = sample_heun(merged, range(3), SHAPE, schedule="inserted")
    assert min(quality.gammas) >= gamma_eta - 1e-9 and max(likelihood.gammas) <= gamma_eta + 1e-9
    assert any(abs(g - gamma_eta) < 1e-9 for g in quality.gammas)     # a step ends at the switch...
    assert any(abs(g - gamma_eta) < 1e-9 for g in likelihood.gammas)  # ...and the next starts there
    assert record.nfe.tolist() == [37] * 3 == [quality.calls + likelihood.calls] * 3


@pytest.mark.parametrize("sampler, atol", [(sample_heun, 1e-5), (sample_ancestral, 1e-5), (sample_ode, 1e-4)])
def test_images_do_not_depend_on_batch_size(gaussian, sampler, atol):
    seeds = range(100, 164)
    runs = [sampler(gaussian, seeds, SHAPE, batch_size=b) for b in (1, 7, 64)]
    for run in runs[1:]:
        torch.testing.assert_close(run.x, runs[0].x, rtol=0, atol=atol)


@pytest.mark.parametrize("sampler", [sample_ode, sample_heun, sample_ancestral])
def test_reported_nfe_is_counted(gaussian, sampler):
    quality, likelihood = Spy(gaussian), Spy(GaussianExpert(gaussian.mean, gaussian.cov, -13.3, 5.0))
    record = sampler(switch(quality, likelihood, 0.3), range(10), SHAPE, batch_size=4)
    assert int(record.nfe.sum()) == quality.rows + likelihood.rows


def test_sampler_bad_input(gaussian):
    with pytest.raises(ValueError, match="shape must be"):
        sample_heun(gaussian, [0], (2, 2))
    with pytest.raises(ValueError, match="tolerances"):
        sample_ode(gaussian, [0], SHAPE, rtol=0)
    with pytest.raises(ValueError, match="at least one seed"):
        sample_ancestral(gaussian, [], SHAPE)


def test_ode_never_leaves_the_experts_range(gaussian):
    spy = Spy(gaussian)
    sample_ode(spy, range(8), SHAPE)
    assert gaussian.gamma_min <= min(spy.gammas) and max(spy.gammas) <= gaussian.gamma_max


class FirstInput:
    """Wraps an expert and keeps the first x it is asked to denoise."""

    def __init__(self, expert):
        self.expert, self.gamma_min, self.gamma_max, self.first = expert, expert.gamma_min, expert.gamma_max, None

    def denoise(self, x, s):
        self.first = x.clone() if self.first is None else self.first
        return self.expert.denoise(x, s)


def test_heun_starts_as_nvlabs_edm_sampler(gaussian):
    """NVlabs' edm_sampler: x = sigma_max * latents in float64 (not the VP prior's sqrt(1 + sigma_max^2))."""
    recorder = FirstInput(gaussian)
    sample_heun(recorder, [5], (1, 2, 2), steps=4)
    s_max = heun_noise_levels(gaussian, 4)[0]
    latent = torch.randn((1, 2, 2), generator=torch.Generator().manual_seed(5))
    assert torch.equal(recorder.first[0], (s_max * latent.double()).float())


def test_ancestral_clips_the_denoised_estimate_as_vdm_clip_samples():
    far = GaussianExpert(torch.full((1, 2, 2), 5.0, dtype=torch.float64), 0.01 * torch.eye(4, dtype=torch.float64),
                         -13.3, 5.0)
    clipped, free = (sample_ancestral(far, range(4), (1, 2, 2), steps=32, clip_denoised=clip).x for clip in (True, False))
    assert clipped.max() < 1.01 and free.min() > 4  # D clipped to [-1, 1] at every step, as VDM's sampler does

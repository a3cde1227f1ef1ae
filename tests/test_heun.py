"""EDM's Heun sampler for merged experts (issue 14): the two schedules, exact Gaussian covariance, experts
only ever asked inside their gamma range, batch invariance, NFE per image."""
import math

import pytest
import torch

from expertmerge.experts import GaussianExpert
from expertmerge.merge import switch, switch_many
from expertmerge.sampling import HEUN_SCHEDULES, heun_noise_levels, sample_heun

from conftest import Spy, gaussian_data

SHAPE = (1, 2, 2)
QUALITY_RANGE, LIKELIHOOD_RANGE = (-12.43, 8.764), (-13.3, 5.0)


class StrictSpy(Spy):
    """A Spy that refuses any noise level outside its expert's gamma range."""

    def denoise(self, x, s):
        gamma = 2 * torch.log(torch.as_tensor(s, dtype=torch.float64))
        assert bool((gamma >= self.gamma_min - 1e-9).all() and (gamma <= self.gamma_max + 1e-9).all()), \
            (gamma.min().item(), gamma.max().item(), self.gamma_min, self.gamma_max)
        return super().denoise(x, s)


def experts(strict=False):
    mean, cov = gaussian_data()
    wrap = StrictSpy if strict else (lambda e: e)
    return (wrap(GaussianExpert(mean, cov, *QUALITY_RANGE)), wrap(GaussianExpert(mean, cov, *LIKELIHOOD_RANGE)))


def heun_covariance(expert, **options) -> torch.Tensor:
    """The covariance of Heun's samples, exactly: for a Gaussian expert each step is affine in x, so a sample is
    A n + b of its latent n ~ N(0, I) and its covariance A A^T. A is read off 16 samples whose latents are
    regenerated from their seeds."""
    seeds = range(16)
    x = sample_heun(expert, seeds, SHAPE, **options).x.reshape(16, -1).double()
    n = torch.stack([torch.randn(SHAPE, generator=torch.Generator().manual_seed(k)) for k in seeds]).reshape(16, -1)
    design = torch.cat([n.double(), torch.ones(16, 1, dtype=torch.float64)], dim=1)
    linear = torch.linalg.lstsq(design, x).solution[:-1].T
    return linear @ linear.T


def relative_error(cov, exact) -> float:
    return float(torch.linalg.norm(cov - exact) / torch.linalg.norm(exact))


@pytest.mark.parametrize("schedule", HEUN_SCHEDULES)
@pytest.mark.parametrize("eta", [None, 0.0395, 0.3, 0.5, 0.8], ids=["single", "eta_min", "0.3", "0.5", "0.8"])
def test_heun_at_18_steps_reaches_the_exact_covariance(eta, schedule):
    """Heun's second-order error at EDM's 18 steps: the covariance of its samples is within 14% (Frobenius,
    relative) of the data's, for a single expert and for merges at any switch, with either schedule; at
    36 steps within 4%: the error falls as the step squared."""
    quality, likelihood = experts()
    expert = quality if eta is None else switch(quality, likelihood, eta)
    exact = quality.cov
    coarse = relative_error(heun_covariance(expert, steps=18, schedule=schedule), exact)
    fine = relative_error(heun_covariance(expert, steps=36, schedule=schedule), exact)
    assert coarse < 0.14 and fine < 0.04, (coarse, fine)
    assert 3.0 < coarse / fine < 5.0


@pytest.mark.parametrize("schedule", HEUN_SCHEDULES)
@pytest.mark.parametrize("steps", [2, 3, 5, 9, 18])
def test_no_step_asks_an_expert_outside_its_range(steps, schedule):
    quality, likelihood = experts(strict=True)
    for merged in [switch(quality, likelihood, eta) for eta in (0.0395, 0.2, 0.5, 0.8294)] + [
            switch_many([likelihood, quality, likelihood, quality], [0.3, 0.45, 0.6])]:
        record = sample_heun(merged, range(3), SHAPE, steps=steps, schedule=schedule)
        assert torch.isfinite(record.x).all()


@pytest.mark.parametrize("schedule, extra", [("inserted", 2), ("split", 0)])
def test_nfe_per_image_counts_the_switch(schedule, extra):
    """A single expert spends 2 steps - 1; "inserted" pays 2 more per switch, "split" none."""
    quality, likelihood = experts()
    assert sample_heun(quality, range(2), SHAPE, steps=9, schedule=schedule).nfe.tolist() == [17, 17]
    merged = switch(quality, likelihood, 0.4)
    assert sample_heun(merged, range(2), SHAPE, steps=9, schedule=schedule).nfe.tolist() == [17 + extra] * 2
    three = switch_many([likelihood, quality, likelihood, quality], [0.3, 0.45, 0.6])
    assert sample_heun(three, [0], SHAPE, steps=9, schedule=schedule).nfe.tolist() == [17 + 3 * extra]


def test_split_schedule_keeps_the_levels_and_places_the_switch():
    quality, likelihood = experts()
    single = heun_noise_levels(quality, 9)
    for eta in (0.0395, 0.3, 0.5, 0.8294):
        merged = switch(quality, likelihood, eta)
        levels = heun_noise_levels(merged, 9, schedule="split")
        gamma_eta = LIKELIHOOD_RANGE[0] + eta * (QUALITY_RANGE[1] - LIKELIHOOD_RANGE[0])
        assert len(levels) == len(single) and levels[-1] == 0.0
        assert all(b < a for a, b in zip(levels[:-1], levels[1:]))
        assert any(abs(2 * math.log(s) - gamma_eta) < 1e-9 for s in levels[:-1])
        assert levels[0] == pytest.approx(math.exp(QUALITY_RANGE[1] / 2))
        assert levels[-2] == pytest.approx(math.exp(LIKELIHOOD_RANGE[0] / 2))
    assert heun_noise_levels(quality, 9, schedule="split") == single  # nothing to place: EDM's own schedule
    with pytest.raises(ValueError, match="schedule must be one of"):
        heun_noise_levels(quality, 9, schedule="snapped")


@pytest.mark.parametrize("schedule", HEUN_SCHEDULES)
def test_merged_heun_samples_do_not_depend_on_batch_size(schedule):
    quality, likelihood = experts()
    merged = switch(quality, likelihood, 0.5)
    runs = [sample_heun(merged, range(20, 44), SHAPE, steps=9, schedule=schedule, batch_size=b).x for b in (1, 5, 24)]
    for run in runs[1:]:
        torch.testing.assert_close(run, runs[0], rtol=0, atol=1e-6)

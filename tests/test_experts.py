"""Adapters agree with the exact Gaussian denoiser written in each family's native parameterisation."""
import math

import pytest
import torch

from expertmerge.experts import (EDMExpert, GaussianExpert, GaussianPathExpert, GaussianSchedule, VDMExpert,
                                 check_expert)
from expertmerge.experts.registry import get_family
from expertmerge.noise import (gamma_to_noise_level, noise_level_to_gamma, vp_alpha_from_noise_level,
                               vp_alpha_sigma)

from conftest import gaussian_data

MEAN, COV = gaussian_data()
SHAPE = MEAN.shape


def posterior_mean(z, alpha, sigma):
    """E[x0 | z] for z = alpha x0 + sigma eps, x0 ~ N(MEAN, COV), written in the path's own coordinates."""
    n, dim = z.shape[0], MEAN.numel()
    a, b = alpha.reshape(-1, 1, 1).double(), sigma.reshape(-1, 1, 1).double()
    gain = torch.stack([a[i] * COV @ torch.linalg.inv(a[i] ** 2 * COV + b[i] ** 2 * torch.eye(dim, dtype=torch.float64))
                        for i in range(n)])
    residual = z.reshape(n, dim, 1).double() - a * MEAN.reshape(1, dim, 1)
    return (MEAN.reshape(1, dim, 1) + gain @ residual).reshape(z.shape)


def test_noise_clock():
    lo, hi = get_family("edm").gamma_range
    assert lo == pytest.approx(-12.4292, abs=1e-4) and hi == pytest.approx(8.7640, abs=1e-4)
    gamma = torch.linspace(-13.3, 8.764, 50, dtype=torch.float64)
    alpha, sigma = vp_alpha_sigma(gamma)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(gamma), rtol=0, atol=1e-15)
    torch.testing.assert_close(-torch.log(alpha**2 / sigma**2), gamma, rtol=0, atol=1e-12)
    torch.testing.assert_close(noise_level_to_gamma(gamma_to_noise_level(gamma)), gamma, rtol=0, atol=1e-12)
    torch.testing.assert_close(vp_alpha_from_noise_level(gamma_to_noise_level(gamma)), alpha, rtol=1e-14, atol=0)


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(1)
    s = torch.exp(torch.linspace(-6.5, 4.3, 12, dtype=torch.float64))
    x0 = MEAN + 0.4 * torch.randn(12, *SHAPE, generator=generator, dtype=torch.float64)
    x = (x0 + s.reshape(-1, 1, 1, 1) * torch.randn(x0.shape, generator=generator, dtype=torch.float64)).float()
    return x, s


def exact(x, s):
    return GaussianExpert(MEAN, COV, -13.3, 8.764).denoise(x, s)


def test_edm_adapter(batch):
    x, s = batch

    def edm_net(x, sigma):  # D(x; sigma) in EDM's VE coordinates: alpha = 1, sigma = s
        return posterior_mean(x, torch.ones_like(sigma), sigma).float()

    expert = EDMExpert(edm_net)
    assert (expert.gamma_min, expert.gamma_max) == pytest.approx(get_family("edm").gamma_range)
    torch.testing.assert_close(expert.denoise(x, s), exact(x, s), rtol=0, atol=1e-5)


def test_vdm_adapter(batch):
    x, s = batch

    def vdm_net(z, gamma):  # epsilon-prediction on the VP path fed gamma
        alpha, sigma = vp_alpha_sigma(gamma.double())
        x0_hat = posterior_mean(z, alpha, sigma)
        return ((z.double() - alpha.reshape(-1, 1, 1, 1) * x0_hat) / sigma.reshape(-1, 1, 1, 1)).float()

    expert = VDMExpert(vdm_net)
    assert (expert.gamma_min, expert.gamma_max) == (-13.3, 5.0)
    torch.testing.assert_close(expert.denoise(x, s), exact(x, s), rtol=0, atol=1e-5)


# A non-VP path (rectified-flow style, alpha = 1 - u, sigma = u) and a scaled VP path.
FLOW = GaussianSchedule(alpha=lambda u: 1 - u, sigma=lambda u: u, t_min=1e-3, t_max=0.995)
SCALED_VP = GaussianSchedule(alpha=lambda u: 3 * torch.sqrt(torch.sigmoid(-(-14 + 24 * u))),
                             sigma=lambda u: 3 * torch.sqrt(torch.sigmoid(-14 + 24 * u)),
                             gamma_inverse=lambda gamma: (gamma + 14) / 24)


@pytest.mark.parametrize("schedule", [FLOW, SCALED_VP], ids=["flow", "scaled-vp"])
@pytest.mark.parametrize("parameterization", ["eps", "x0", "v"])
def test_gaussian_path_adapter(batch, schedule, parameterization):
    x, s = batch

    def net(z, u):
        alpha, sigma = schedule.alpha(u.double()), schedule.sigma(u.double())
        x0_hat = posterior_mean(z, alpha, sigma)
        a, b, zd = alpha.reshape(-1, 1, 1, 1), sigma.reshape(-1, 1, 1, 1), z.double()
        eps_hat = (zd - a * x0_hat) / b
        return {"eps": eps_hat, "x0": x0_hat, "v": a * eps_hat - b * x0_hat}[parameterization].float()

    expert = GaussianPathExpert(net, schedule, parameterization)
    keep = (2 * torch.log(s) > expert.gamma_min) & (2 * torch.log(s) < expert.gamma_max)
    assert keep.sum() >= 8
    torch.testing.assert_close(expert.denoise(x[keep], s[keep]), exact(x[keep], s[keep]), rtol=0, atol=1e-5)


def test_schedule_inverse_by_bisection():
    gamma = torch.linspace(-6, 5, 7, dtype=torch.float64)
    u = FLOW.time_at(gamma)
    torch.testing.assert_close(FLOW.gamma(u), gamma, rtol=0, atol=1e-10)


def test_bad_input_names_the_problem(gaussian):
    x = torch.zeros(2, *SHAPE, dtype=torch.float32)
    with pytest.raises(TypeError, match="float32"):
        gaussian.denoise(x.double(), 1.0)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        gaussian.denoise(x[0], 1.0)
    with pytest.raises(ValueError, match="must be > 0"):
        gaussian.denoise(x, torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="must be > 0"):
        gaussian.denoise(x, -1.0)
    with pytest.raises(ValueError, match="shape"):
        gaussian.denoise(x, torch.ones(3))

    class NoRange:
        gamma_max = 1.0

        def denoise(self, x, s):
            return x

    with pytest.raises(TypeError, match="gamma_min"):
        check_expert(NoRange())
    with pytest.raises(ValueError, match="parameterization"):
        GaussianPathExpert(lambda z, u: z, FLOW, "score")
    assert math.isfinite(gaussian.noise_level_min)

"""Flow models as experts: the `flow` family (rectified flow / flow matching on x_t = (1 - t) x + t eps) and the
"velocity" parameterisation of `GaussianPathExpert`, proven on Gaussian data, whose velocity field is known in
closed form: the adapter gives the exact denoiser, the ODE NLL the closed-form likelihood, the clock is exact
at both ends, and a flow expert merged with itself is itself."""
import math

import pytest
import torch
from test_likelihood import BITS, SHAPE, Model, draws, quantised_samples

from conftest import gaussian_data
from expertmerge.datasets import load_digits_splits
from expertmerge.experts import GaussianExpert, GaussianPathExpert, GaussianSchedule
from expertmerge.experts.checkpoint import load_expert
from expertmerge.experts.flow import FlowExpert, constants, flow_loss, flow_time
from expertmerge.experts.registry import get_family
from expertmerge.images import from_uint8
from expertmerge.likelihood import ode_nll
from expertmerge.merge import switch
from expertmerge.sampling import heun_noise_levels, sample_heun, sample_ode
from expertmerge.train_expert import train_expert

GAMMA_MIN, GAMMA_MAX = get_family("flow").gamma_range


class ExactVelocity(torch.nn.Module):
    """E[eps - x | x_t] for x ~ N(mean, cov) on x_t = (1 - t) x + t eps, in closed form:
    E[x | x_t] = mean + (1 - t) cov ((1 - t)^2 cov + t^2 I)^-1 (x_t - (1 - t) mean), velocity = (x_t - E[x | x_t]) / t."""

    def __init__(self, mean, cov):
        super().__init__()
        self.mean, self.cov = mean.reshape(-1).double(), cov.double()

    def forward(self, z, t):
        n, t = z.shape[0], t.double().view(-1, 1)
        flat = z.double().reshape(n, -1)
        eye = torch.eye(len(self.mean), dtype=torch.float64)
        inner = (1 - t)[:, :, None] ** 2 * self.cov + t[:, :, None] ** 2 * eye
        solved = torch.linalg.solve(inner, (flat - (1 - t) * self.mean).unsqueeze(-1)).squeeze(-1)
        expected = self.mean + (1 - t) * solved @ self.cov
        return ((flat - expected) / t).reshape(z.shape).float()


def experts(gamma_min=GAMMA_MIN, gamma_max=GAMMA_MAX):
    mean, cov = gaussian_data(SHAPE)
    return FlowExpert(ExactVelocity(mean, cov), gamma_min, gamma_max), GaussianExpert(mean, cov, gamma_min, gamma_max)


def test_the_flow_adapter_is_the_exact_denoiser_on_gaussian_data():
    flow, exact = experts()
    generator = torch.Generator().manual_seed(0)
    for gamma in torch.linspace(GAMMA_MIN, GAMMA_MAX, 9).tolist():
        s = math.exp(gamma / 2)
        x = (exact.mean + s * torch.randn(16, *SHAPE, generator=generator, dtype=torch.float64)).float()
        torch.testing.assert_close(flow.denoise(x, s), exact.denoise(x, s), rtol=1e-4, atol=1e-4 * (1 + s))


def test_the_flow_experts_ode_nll_is_the_closed_form_likelihood():
    flow, exact = experts()
    model, n = Model(exact, GAMMA_MIN, GAMMA_MAX), 48
    images = quantised_samples(exact, n)
    record = ode_nll(flow, images, batch_size=n)
    x0, log_q, probe = draws(n, from_uint8(images), model.s0)
    closed = -(model.log_density(x0) - model.hutchinson_error(probe) - log_q) / BITS
    assert abs(record.mean() - closed.mean().item()) < 0.01  # the bound, on the average
    assert (record.bpd - closed).abs().max() < 5e-3


def test_time_matching_is_exact_at_both_ends_of_the_range():
    flow, _ = experts()
    t_min, t_max = flow.schedule.t_min, flow.schedule.t_max
    assert (t_min, t_max) == pytest.approx((1e-3, 0.99), rel=1e-12)
    ends = torch.tensor([GAMMA_MIN, GAMMA_MAX], dtype=torch.float64)
    torch.testing.assert_close(flow_time(ends), torch.tensor([t_min, t_max], dtype=torch.float64), rtol=0, atol=1e-15)
    torch.testing.assert_close(flow.schedule.gamma(flow_time(ends)), ends, rtol=0, atol=1e-12)
    assert (flow.gamma_min, flow.gamma_max) == (GAMMA_MIN, GAMMA_MAX)  # the family's range, to the bit
    assert (constants()["t_min"], constants()["t_max"]) == pytest.approx((t_min, t_max), rel=1e-15)


def test_a_flow_expert_merged_with_itself_is_itself():
    flow, _ = experts()
    twin = FlowExpert(flow.net, GAMMA_MIN, GAMMA_MAX)
    merged = switch(flow, twin, 0.4)
    seeds = range(12)
    torch.testing.assert_close(sample_ode(merged, seeds, SHAPE).x, sample_ode(flow, seeds, SHAPE).x)
    levels = heun_noise_levels(merged, schedule="inserted")  # on the same levels: "split" moves one to the switch
    torch.testing.assert_close(sample_heun(merged, seeds, SHAPE, noise_levels=levels).x,
                               sample_heun(flow, seeds, SHAPE, noise_levels=levels).x)


@pytest.mark.parametrize("derivatives", ["given", "autograd"])
def test_velocity_wraps_any_gaussian_path(derivatives):
    """A cosine VP path u -> (cos(pi u / 2), sin(pi u / 2)): the exact velocity alpha' x0 + sigma' eps, converted
    back by the "velocity" parameterisation, with its derivatives given or taken by autograd."""
    mean, cov = gaussian_data(SHAPE)
    exact = GaussianExpert(mean, cov, -12.0, 8.0)
    alpha, sigma = (lambda u: torch.cos(math.pi * u / 2)), (lambda u: torch.sin(math.pi * u / 2))
    d_alpha, d_sigma = (lambda u: -math.pi / 2 * torch.sin(math.pi * u / 2)), (lambda u: math.pi / 2 * torch.cos(math.pi * u / 2))

    def velocity(z, u):
        u = u.double().view(-1, 1, 1, 1)
        a, b = alpha(u), sigma(u)
        x0 = exact.denoise((z.double() / a).float(), (b / a).reshape(-1)).double()
        return (d_alpha(u) * x0 + d_sigma(u) * (z.double() - a * x0) / b).float()

    given = dict(alpha_derivative=d_alpha, sigma_derivative=d_sigma) if derivatives == "given" else {}
    schedule = GaussianSchedule(alpha, sigma, t_min=0.02, t_max=0.98, **given)
    wrapped = GaussianPathExpert(velocity, schedule, "velocity")
    x = (mean + torch.randn(8, *SHAPE, dtype=torch.float64)).float()
    for s in (0.05, 0.5, 3.0):
        torch.testing.assert_close(wrapped.denoise(x, s), exact.denoise(x, s), rtol=1e-4, atol=1e-4)


def test_a_flow_expert_trains_with_either_time_distribution_and_loads(tmp_path):
    splits = load_digits_splits(seed=0, val_fraction=0.1, test_fraction=0.2)
    x0 = from_uint8(torch.from_numpy(splits["train"][:16])).float()
    net = lambda z, t: torch.zeros_like(z)  # noqa: E731  predicting 0: the loss is E|eps - x0|^2 per pixel
    for kind in ("uniform", "logit-normal"):
        loss = flow_loss(net, x0, torch.Generator().manual_seed(0), 1e-3, 0.99, kind)
        assert loss.shape == (16,) and torch.isfinite(loss).all()
        assert loss.mean().item() == pytest.approx(1 + x0.square().mean().item(), rel=0.15)
    train_expert("flow", splits["train"], splits["val"], out_stem=tmp_path / "flow", seed=0, steps=3, batch_size=8,
                 eval_every=1, val_repeats=1, gamma_min=GAMMA_MIN, gamma_max=GAMMA_MAX)
    loaded = load_expert(tmp_path / "flow")
    assert isinstance(loaded, FlowExpert) and (loaded.gamma_min, loaded.gamma_max) == pytest.approx((GAMMA_MIN, GAMMA_MAX))
    x = torch.randn(2, 1, 8, 8)
    assert loaded.denoise(x, 1.0).shape == x.shape and torch.isfinite(loaded.denoise(x, 1.0)).all()

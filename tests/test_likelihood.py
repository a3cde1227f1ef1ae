"""Likelihood on the exact Gaussian expert: ODE NLL and VLB against closed forms, Hutchinson, invariances."""
import itertools
import math

import numpy as np
import pytest
import scipy.stats
import torch

from expertmerge.experts import EDMExpert, GaussianExpert
from expertmerge.images import from_uint8, to_uint8
from expertmerge.likelihood import (dequantize_tn, dequantize_uniform, diffusion_loss, ode_nll, prior_kl,
                                    prior_log_density, rademacher, summarize_vlb_runs, vp_velocity_and_divergence,
                                    vlb, vlb_runs)
from expertmerge.merge import switch
from expertmerge.sampling import sample_ode

from conftest import Spy, gaussian_data

GAMMA_MIN, GAMMA_MAX = -13.3, 5.0
SHAPE = (1, 2, 2)
DIM = 4
BITS = DIM * math.log(2)  # nats -> bits/dim


def make_expert(gamma_min=GAMMA_MIN, gamma_max=GAMMA_MAX):
    mean, cov = gaussian_data(SHAPE)
    return GaussianExpert(mean, cov, gamma_min, gamma_max)


def quantised_samples(expert, n, seed=123):
    """8-bit images made by quantising samples of the expert's Gaussian."""
    generator = torch.Generator().manual_seed(seed)
    chol = torch.linalg.cholesky(expert.cov)
    x = expert.mean.reshape(1, -1) + torch.randn(n, DIM, generator=generator, dtype=torch.float64) @ chol.T
    return to_uint8(x.reshape(n, *SHAPE).float())


class Model:
    """Closed forms for the exact PF-ODE of GaussianExpert with the N(0, I) VP prior at gamma_max.

    In eigen-coordinates y = U^T (x - mu) the ODE moves y proportionally to sqrt(lambda + s^2), so the
    model at gamma_min is N(m, v) per direction with r^2 = (lambda + s0^2)/(lambda + s1^2),
    m = -(U^T mu) r and v = (1 + s1^2) r^2.
    """

    def __init__(self, expert, gamma_min=GAMMA_MIN, gamma_max=GAMMA_MAX):
        self.lam, self.u, self.mean = expert.eigenvalues, expert.eigenvectors, expert.mean.reshape(-1)
        self.s0, self.s1 = math.exp(gamma_min / 2), math.exp(gamma_max / 2)
        self.gamma_min, self.gamma_max = gamma_min, gamma_max
        r = torch.sqrt((self.lam + self.s0**2) / (self.lam + self.s1**2))
        self.m, self.v = -(self.u.T @ self.mean) * r, (1 + self.s1**2) * r**2
        # K = 1/2 int dD/dx dgamma: a fixed probe p makes the Hutchinson integral exact minus (p^T K p - tr K).
        k = 0.5 * torch.log(self.s1**2 / (self.lam + self.s1**2) * (self.lam + self.s0**2) / self.s0**2)
        self.k = self.u @ torch.diag(k) @ self.u.T

    def eigen(self, x):
        return (x.double().reshape(x.shape[0], -1) - self.mean) @ self.u

    def log_density(self, x0):
        """Exact log density of the model at gamma_min, in VE coordinates."""
        y = self.eigen(x0)
        return (-0.5 * torch.log(2 * math.pi * self.v) - (y - self.m) ** 2 / (2 * self.v)).sum(1)

    def hutchinson_error(self, probe):
        p = probe.double().reshape(probe.shape[0], -1)
        return ((p @ self.k) * p).sum(1) - self.k.trace()

    def expected_tn_bpd(self, x):
        """E over the truncated-normal eps of -(log p(x0) - log q(x0|x)), in bits/dim (kappa = Var eps)."""
        tau = 1 / (256 * self.s0)
        mass = math.erf(tau / math.sqrt(2))
        kappa = 1 - 2 * tau * math.exp(-tau**2 / 2) / math.sqrt(2 * math.pi) / mass
        y = self.eigen(x)
        log_p = (-0.5 * torch.log(2 * math.pi * self.v) - ((y - self.m) ** 2 + self.s0**2 * kappa) / (2 * self.v)).sum(1)
        log_q = DIM * (-0.5 * math.log(2 * math.pi) - kappa / 2 - math.log(mass) - math.log(self.s0))
        return -(log_p - log_q) / BITS

    def diffusion_bpd(self, x):
        """1/2 int E||eps - eps_hat||^2 dgamma with E||.||^2 = sum lam^2/(lam+u)^2 + u y^2/(lam+u)^2, u = s^2."""
        u0, u1, lam, y = self.s0**2, self.s1**2, self.lam, self.eigen(x)
        antiderivative = lambda u: torch.log(u / (lam + u)) + lam / (lam + u)  # noqa: E731
        first = (antiderivative(torch.tensor(u1)) - antiderivative(torch.tensor(u0))).sum()
        second = (y**2 * (1 / (lam + u0) - 1 / (lam + u1))).sum(1)
        return 0.5 * (first + second) / BITS

    def reconstruction_bpd(self, x, step=0.01):
        """E over eps ~ N(0, 1) of the 256-level decoder's -log p(x|z0), a 1-D integral per dimension
        (trapezoid on |eps| <= 9; bins more than 10 away from the true one weigh below e^-1000)."""
        eps = torch.arange(-9, 9 + step / 2, step, dtype=torch.float64)
        weight = torch.exp(-eps**2 / 2) / math.sqrt(2 * math.pi) * step
        flat = x.double().reshape(x.shape[0], -1)
        table = {}
        for value in torch.unique(flat).tolist():
            level = round((value + 1) * 128 - 0.5)
            centres = (2 * torch.arange(max(level - 10, 0), min(level + 11, 256), dtype=torch.float64) + 1) / 256 - 1
            logits = -0.5 * ((value + self.s0 * eps[:, None] - centres) / self.s0) ** 2
            table[value] = ((torch.logsumexp(logits, 1) + 0.5 * eps**2) * weight).sum().item()
        return torch.tensor([[table[v] for v in row] for row in flat.tolist()]).sum(1) / BITS


def draws(n, x, s0, dequantization="tn", seeds=None):
    """Re-draw what ode_nll draws for image j from generator seeds[j]: dequantisation noise, then the probe."""
    generators = [torch.Generator().manual_seed(s) for s in (range(n) if seeds is None else seeds)]
    x0, log_q = dequantize_tn(x, s0, generators) if dequantization == "tn" else dequantize_uniform(x, generators)
    return x0, log_q, rademacher(generators, x.shape[1:], "cpu")


# ---------------------------------------------------------------------------------------------
# Hutchinson (Eq. 16).

class TinyDenoiser(torch.nn.Module):
    """A small nonlinear conv net D(x; sigma), so the VJP goes through real autograd."""

    def __init__(self, channels=1):
        super().__init__()
        torch.manual_seed(0)
        self.inner = torch.nn.Conv2d(channels, 8, 3, padding=1)
        self.outer = torch.nn.Conv2d(8, channels, 3, padding=1)

    def forward(self, x, sigma):
        c = (1 + sigma.reshape(-1, 1, 1, 1) ** 2) ** -0.5
        return c * x + self.outer(torch.tanh(self.inner(c * x)))


@pytest.mark.parametrize("kind", ["gaussian", "convnet"])
def test_hutchinson_mean_over_all_probes_is_the_exact_divergence(kind):
    expert = make_expert() if kind == "gaussian" else EDMExpert(TinyDenoiser(channels=3))
    shape = SHAPE if kind == "gaussian" else (3, 2, 2)
    dim, gamma = math.prod(shape), -1.3
    alpha, s = (1 + math.exp(gamma)) ** -0.5, math.exp(gamma / 2)
    z = torch.randn(1, *shape, generator=torch.Generator().manual_seed(5))
    velocity_of = lambda v: alpha * (alpha * v - expert.denoise(v / alpha, s)) / 2  # the VP PF-ODE
    jacobian = torch.autograd.functional.jacobian(velocity_of, z)
    exact = jacobian.reshape(dim, dim).double().trace()
    # All 2^dim Rademacher probes: E[p p^T] = I holds exactly over the enumeration.
    probes = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=dim))).reshape(-1, *shape)
    velocity, divergence = vp_velocity_and_divergence(expert, z.expand(len(probes), *shape), gamma, probes)
    assert divergence.dtype == torch.float64 and divergence.shape == (len(probes),)
    assert divergence.mean().item() == pytest.approx(exact.item(), abs=1e-5)
    assert divergence.std() > 0.01  # a real estimator: single probes differ
    assert torch.allclose(velocity[0], velocity_of(z)[0])


def test_rademacher_probe_is_per_image():
    probes = rademacher([torch.Generator().manual_seed(s) for s in (7, 8)], (3, 4, 4), "cpu")
    alone = rademacher([torch.Generator().manual_seed(8)], (3, 4, 4), "cpu")
    assert set(probes.unique().tolist()) == {-1.0, 1.0} and torch.equal(probes[1], alone[0])


# ---------------------------------------------------------------------------------------------
# Dequantisation.

def test_truncated_normal_dequantization_draws_and_density():
    s0, n = 0.002, 2000
    tau = 1 / (256 * s0)
    x = from_uint8(torch.randint(0, 256, (n, 2, 2, 1), dtype=torch.uint8))
    x0, log_q = dequantize_tn(x, s0, [torch.Generator().manual_seed(j) for j in range(n)])
    eps = ((x0 - x.double()) / s0).reshape(n, -1)
    assert eps.abs().max() <= tau and (x0 - x.double()).abs().max() <= 1 / 256  # within half a bin
    assert scipy.stats.kstest(eps.flatten().numpy(), scipy.stats.truncnorm(-tau, tau).cdf).pvalue > 1e-3
    expected = scipy.stats.truncnorm.logpdf(eps.numpy(), -tau, tau).sum(1) - DIM * math.log(s0)
    assert np.allclose(log_q.numpy(), expected, rtol=0, atol=1e-9)


def test_prior_log_density_is_the_vp_standard_normal():
    z1 = torch.randn(3, *SHAPE, dtype=torch.float64)
    normal = torch.distributions.Normal(0.0, 1.0)
    assert torch.allclose(prior_log_density(z1), normal.log_prob(z1).reshape(3, -1).sum(1))


# ---------------------------------------------------------------------------------------------
# ODE NLL (Eq. 8-9) against closed forms.

def test_ode_nll_matches_the_closed_form_of_the_model():
    expert, n = make_expert(), 300
    model, images = Model(expert), quantised_samples(expert, n)
    record = ode_nll(expert, images, batch_size=100)
    assert record.bpd.dtype == torch.float64 and record.bpd.shape == (n,)
    assert record.nfe.dtype == torch.int64 and 50 < record.nfe.min() <= record.nfe.max() < 400
    # Per image, given its own dequantisation noise and probe, the closed form is exact: solver error only.
    x0, log_q, probe = draws(n, from_uint8(images), model.s0)
    exact = -(model.log_density(x0) - model.hutchinson_error(probe) - log_q) / BITS
    assert (record.bpd - exact).abs().max() < 1e-3
    assert abs(record.mean() - exact.mean().item()) < 1e-4  # the issue asks for 0.01 on the average
    # Averaged over the noise: the expected bound, within the reported standard error.
    expected = model.expected_tn_bpd(from_uint8(images)).mean().item()
    assert abs(record.mean() - expected) < 4 * record.standard_error()


def test_ode_nll_error_shrinks_with_the_tolerance():
    expert, n = make_expert(), 16
    model, images = Model(expert), quantised_samples(expert, n)
    x0, log_q, probe = draws(n, from_uint8(images), model.s0)
    exact = -(model.log_density(x0) - model.hutchinson_error(probe) - log_q) / BITS
    loose, tight = (ode_nll(expert, images, rtol=tol, atol=tol) for tol in (1e-4, 1e-8))
    assert (tight.bpd - exact).abs().max() < 1e-5 < (loose.bpd - exact).abs().max()
    assert tight.nfe[0] > loose.nfe[0]


def test_uniform_dequantization_matches_the_closed_form():
    expert, n = make_expert(), 64
    model, images = Model(expert), quantised_samples(expert, n)
    record = ode_nll(expert, images, dequantization="uniform", seeds=range(100, 100 + n))
    x0, log_q, probe = draws(n, from_uint8(images), model.s0, "uniform", seeds=range(100, 100 + n))
    assert (x0 - from_uint8(images).double()).abs().max() <= 1 / 256 and torch.allclose(log_q, torch.tensor(DIM * math.log(128.0)).double())
    exact = -(model.log_density(x0) - model.hutchinson_error(probe)) / BITS + 7  # log2(128) = 7 bits/dim
    assert (record.bpd - exact).abs().max() < 1e-3


def test_ode_nll_depends_on_the_batch_only_within_the_solver_tolerance():
    """What is true about batch invariance: a batch is one ODE system with one step size, so the bpd of an
    image moves with the batch it is solved in (not bit for bit the same), by far less than the NLL's
    standard error across images; the noise an image gets does not move at all."""
    expert = make_expert()
    images = quantised_samples(expert, 16)
    alone, together = ode_nll(expert, images, batch_size=1), ode_nll(expert, images, batch_size=16)
    moved_by = (alone.bpd - together.bpd).abs()
    assert 0 < moved_by.max() < 1e-3 and moved_by.mean() < together.standard_error() / 10, (moved_by, together)
    assert len(set(alone.nfe.tolist())) > 1 and len(set(together.nfe.tolist())) == 1
    # The same image with the same seed gives the same noise wherever it sits.
    moved = ode_nll(expert, images[[5, 3]], seeds=[5, 3], batch_size=2)
    assert (moved.bpd - together.bpd[[5, 3]]).abs().max() < 1e-3


def test_ode_nll_of_a_merged_expert_uses_the_merged_range():
    low, high = make_expert(-13.3, 5.0), make_expert(-12.43, 8.764)
    spies = Spy(low), Spy(high)
    merged = switch(spies[1], spies[0], eta=0.5)  # the same exact denoiser on both sides of the switch
    gamma_eta = -13.3 + 0.5 * (8.764 + 13.3)
    n, done = 32, []
    model, images = Model(low, -13.3, 8.764), quantised_samples(low, 32)
    record = ode_nll(merged, images, batch_size=20, progress=done.append)
    x0, log_q, probe = draws(n, from_uint8(images), model.s0)
    exact = -(model.log_density(x0) - model.hutchinson_error(probe) - log_q) / BITS
    assert (record.bpd - exact).abs().max() < 1e-3 and done == [20, 32]
    assert max(spies[0].gammas) < gamma_eta <= min(spies[1].gammas)
    assert min(spies[0].gammas) == pytest.approx(-13.3) and max(spies[1].gammas) == pytest.approx(8.764)


# ---------------------------------------------------------------------------------------------
# Variational bound (Eq. 6-7).

def test_vlb_terms_match_their_closed_forms():
    expert, n = make_expert(), 20000
    model, images = Model(expert), quantised_samples(expert, n)
    record = vlb(expert, images, batch_size=5000)
    x = from_uint8(images)
    exact_prior = torch.distributions.kl_divergence(
        torch.distributions.Normal(x.double() / math.sqrt(1 + model.s1**2), model.s1 / math.sqrt(1 + model.s1**2)),
        torch.distributions.Normal(0.0, 1.0)).reshape(n, -1).sum(1) / BITS
    assert torch.allclose(record.prior, exact_prior, rtol=1e-10, atol=1e-14)
    for term, closed_form in ((record.reconstruction, model.reconstruction_bpd(x)),
                              (record.diffusion, model.diffusion_bpd(x))):
        error = term - closed_form
        assert abs(error.mean()) < 4 * error.std() / math.sqrt(n)
    assert torch.allclose(record.bpd, record.prior + record.reconstruction + record.diffusion)
    assert record.reconstruction.min() >= 0 and record.diffusion.min() >= 0


def test_diffusion_loss_is_exact_for_given_t_and_noise():
    expert, model, n = make_expert(), Model(make_expert()), 8
    x = from_uint8(quantised_samples(expert, n)).double()
    t, eps = torch.rand(n, dtype=torch.float64), torch.randn(n, *SHAPE, dtype=torch.float64)
    s2 = torch.exp(GAMMA_MIN + t * (GAMMA_MAX - GAMMA_MIN))[:, None]
    shrink = model.lam / (model.lam + s2)  # eps - eps_hat = A eps - (I - A)(x - mu)/s, A = Sigma (Sigma + s^2)^-1
    residual = shrink * (eps.reshape(n, -1) @ model.u) - (1 - shrink) * model.eigen(x) / s2.sqrt()
    exact = 0.5 * (GAMMA_MAX - GAMMA_MIN) * residual.pow(2).sum(1)
    assert torch.allclose(diffusion_loss(expert, x, t, eps), exact, rtol=1e-4)


def test_vlb_agrees_with_the_ode_nll():
    expert, n = make_expert(), 4000
    model, images = Model(expert), quantised_samples(expert, n, seed=7)
    x = from_uint8(images)
    closed_vlb = (prior_kl(x, GAMMA_MAX) / BITS + model.reconstruction_bpd(x) + model.diffusion_bpd(x)).mean()
    closed_ode = model.expected_tn_bpd(x).mean()
    assert abs(closed_vlb - closed_ode) < 0.03  # two bounds on nearly the same model
    bound, nll = vlb(expert, images, batch_size=4000), ode_nll(expert, images, batch_size=4000)
    error = math.hypot(bound.bpd.std() / math.sqrt(n), nll.standard_error())
    assert abs(bound.bpd.mean() - nll.mean()) < 4 * error


def test_vlb_does_not_depend_on_the_batch_and_runs_differ():
    expert = make_expert()
    images = quantised_samples(expert, 10)
    alone, together = vlb(expert, images, batch_size=1), vlb(expert, images, batch_size=10)
    for name in ("bpd", "prior", "reconstruction", "diffusion"):
        assert torch.allclose(getattr(alone, name), getattr(together, name), rtol=1e-9, atol=1e-12)
    assert not torch.allclose(vlb(expert, images, seed=1).bpd, together.bpd)
    summary = vlb_runs(expert, images, runs=3, base_seed=4, batch_size=5)
    per_run = [vlb(expert, images, seed=4 + r).bpd.mean().item() for r in range(3)]
    assert summary.runs == pytest.approx(per_run, rel=1e-12)
    assert summary.mean == pytest.approx(np.mean(per_run)) and summary.std == pytest.approx(np.std(per_run, ddof=1))
    assert summary.prior + summary.reconstruction + summary.diffusion == pytest.approx(summary.mean)


# ---------------------------------------------------------------------------------------------
# Bad input.

class Broken:
    """An expert whose output is NaN where the first pixel is near +1 and s < 0.13 (7 sigma away for a mid-grey pixel)."""

    gamma_min, gamma_max = GAMMA_MIN, GAMMA_MAX

    def __init__(self):
        self.inner = make_expert()

    def denoise(self, x, s):
        out = self.inner.denoise(x, s)
        s = torch.as_tensor(s, dtype=torch.float64).expand(x.shape[0])
        bad = (x[:, 0, 0, 0] > 0.9) & (s < 0.13)
        return torch.where(bad[:, None, None, None], torch.nan, out)


def test_nan_from_the_network_names_images_and_noise_level():
    images = torch.full((8, 2, 2, 1), 128, dtype=torch.uint8)
    images[5, 0, 0, 0] = 255
    with pytest.raises(FloatingPointError, match=r"images \[5\] at noise level s=0\.00129"):
        ode_nll(Broken(), images, batch_size=4)
    with pytest.raises(FloatingPointError, match=r"images \[5\] at noise level s="):
        vlb(Broken(), images, batch_size=4, seed=3)  # for this seed, image 5 crosses 0.9 at its lower level


@pytest.mark.parametrize("call, error, message", [
    (lambda e, im: ode_nll(e, im.float()), TypeError, "uint8"),
    (lambda e, im: ode_nll(e, im[0]), ValueError, r"\[N, H, W, C\]"),
    (lambda e, im: vlb(e, im.float()), TypeError, "uint8"),
    (lambda e, im: ode_nll(e, im, rtol=0), ValueError, "tolerances"),
    (lambda e, im: ode_nll(e, im, atol=-1e-5), ValueError, "tolerances"),
    (lambda e, im: ode_nll(e, im, rtol=math.nan), ValueError, "tolerances"),
    (lambda e, im: ode_nll(e, im, dequantization="variational"), ValueError, "'tn', 'uniform'"),
    (lambda e, im: ode_nll(e, im, seeds=[1, 2]), ValueError, "one seed per image"),
    (lambda e, im: vlb(e, im, batch_size=0), ValueError, "batch_size"),
    (lambda e, im: vlb_runs(e, im, runs=1), ValueError, "runs"),
    (lambda e, im: summarize_vlb_runs([]), ValueError, "at least 2 runs"),
    (lambda e, im: ode_nll(object(), im), TypeError, "gamma_min"),
])
def test_bad_input_is_refused(call, error, message):
    with pytest.raises(error, match=message):
        call(make_expert(), torch.zeros(3, 2, 2, 1, dtype=torch.uint8))


@pytest.mark.parametrize("error_norm", ["batch-rms", "image-max"])
@pytest.mark.parametrize("solver", ["ode_nll", "sample_ode"])
def test_nfe_is_counted_per_batch_and_moves_with_the_batch_size(solver, error_norm):
    """An adaptive solve shares one step size per batch (as score_sde's, whose NFE the paper reports): alone,
    images need different NFE; in a batch they share its count, which moves a few percent with the batch
    size. That is why the tables give the batch size beside the NFE."""
    expert, n = make_expert(), 32
    images = quantised_samples(expert, n)
    run = {"ode_nll": lambda b: ode_nll(expert, images, batch_size=b, error_norm=error_norm),
           "sample_ode": lambda b: sample_ode(expert, range(n), SHAPE, batch_size=b, error_norm=error_norm)}[solver]
    nfe = {b: run(b).nfe for b in (1, 8, 32)}
    assert nfe[1].max() > nfe[1].min()  # images alone: their own NFE
    for b in (8, 32):
        assert all(len(set(chunk.tolist())) == 1 for chunk in nfe[b].split(b))  # one count per batch
        assert abs(nfe[b].double().mean() / nfe[1].double().mean() - 1) < 0.15
    assert nfe[32].max() <= nfe[1].max()  # a batch never needs more than its hardest image alone, here


def test_an_unknown_error_norm_is_refused_before_any_work():
    with pytest.raises(ValueError, match="error_norm must be one of batch-rms, image-max"):
        ode_nll(make_expert(), quantised_samples(make_expert(), 2), error_norm="max")

import hashlib
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from expertmerge.experts.checkpoint import build_network, expert_constants, load_expert, save_expert
from expertmerge.experts.edm import EDMPrecond, edm_loss
from expertmerge.networks.small_unet import SmallUNet
from expertmerge.experts.vdm import vdm_loss
from expertmerge.optimization import EMA
from expertmerge.train_expert import family_defaults, make_config, train_expert

TINY_NET = dict(channels=(8, 16), emb_channels=16)


class Recorder(torch.nn.Module):
    """Raw network F that returns a fixed function of its input and remembers what it was fed."""

    def forward(self, x, labels):
        self.x, self.labels = x.clone(), labels.clone()
        return torch.tanh(x) + labels.view(-1, 1, 1, 1)


class GaussianDenoiser(torch.nn.Module):
    """Exact D(x; sigma) = v x/(v + sigma^2) for x0 ~ N(0, v I), with EDM's sigma_data."""

    def __init__(self, variance, sigma_data=0.5):
        super().__init__()
        self.variance, self.sigma_data = variance, sigma_data

    def forward(self, x, sigma):
        sigma = torch.as_tensor(sigma, dtype=x.dtype).view(-1, 1, 1, 1)
        return self.variance * x / (self.variance + sigma**2)


class GaussianEpsilon(torch.nn.Module):
    """Exact E[eps | z] = sigma z/(alpha^2 v + sigma^2) on the VP path at gamma, for x0 ~ N(0, v I)."""

    def __init__(self, variance, scale=1.0):
        super().__init__()
        self.variance, self.scale = variance, scale

    def forward(self, z, gamma):
        g = gamma.double().view(-1, 1, 1, 1)
        alpha2, sigma2 = torch.sigmoid(-g), torch.sigmoid(g)
        return (self.scale * sigma2.sqrt() * z / (alpha2 * self.variance + sigma2)).to(z.dtype)


def randomised(net, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=generator))
    return net.eval()


def test_edm_precond_coefficients_match_the_paper():
    precond = EDMPrecond(Recorder(), sigma_data=0.5)
    sigma = torch.tensor([0.002, 0.1, 0.5, 3.0, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = precond.coefficients(sigma)
    for k, s in enumerate(sigma.tolist()):
        assert c_skip[k].item() == pytest.approx(0.25 / (s**2 + 0.25), rel=1e-12)
        assert c_out[k].item() == pytest.approx(s * 0.5 / math.sqrt(s**2 + 0.25), rel=1e-12)
        assert c_in[k].item() == pytest.approx(1 / math.sqrt(s**2 + 0.25), rel=1e-12)
        assert c_noise[k].item() == pytest.approx(math.log(s) / 4, rel=1e-12)


def test_edm_precond_forward_is_c_skip_x_plus_c_out_F_of_c_in_x():
    model = Recorder()
    precond = EDMPrecond(model, sigma_data=0.5)
    x = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.002, 0.1, 0.5, 3.0, 80.0])
    out = precond(x, sigma)
    c_skip, c_out, c_in, c_noise = (c.float().view(-1, 1, 1, 1) for c in precond.coefficients(sigma.double()))
    assert torch.allclose(model.x, c_in * x) and torch.allclose(model.labels, c_noise.flatten())
    assert torch.allclose(out, c_skip * x + c_out * (torch.tanh(c_in * x) + c_noise), atol=1e-6)
    assert torch.allclose(precond(x, 0.5), precond(x, torch.full((5,), 0.5)))


def _lognormal_expectation(f, p_mean=-1.2, p_std=1.2, nodes=80):
    """E f(sigma) for ln sigma ~ N(p_mean, p_std^2) by Gauss-Hermite quadrature."""
    u, w = np.polynomial.hermite_e.hermegauss(nodes)
    return float(np.sum(w * f(np.exp(p_mean + p_std * u))) / np.sqrt(2 * np.pi))


def test_edm_loss_of_the_exact_denoiser_matches_its_closed_form_and_beats_a_zero_network():
    variance, sigma_data, n = 0.09, 0.5, 40000
    x0 = math.sqrt(variance) * torch.randn(n, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    exact = edm_loss(GaussianDenoiser(variance, sigma_data), x0, torch.Generator().manual_seed(2))
    # lambda(sigma) * E|D - x0|^2 per pixel = lambda(sigma) v sigma^2/(v + sigma^2)
    expected = _lognormal_expectation(lambda s: (s**2 + sigma_data**2) / (s * sigma_data) ** 2 * variance * s**2 / (variance + s**2))
    assert exact.shape == (n,)
    assert exact.mean().item() == pytest.approx(expected, abs=4 * exact.std().item() / math.sqrt(n))
    zero_net = EDMPrecond(lambda x, labels: torch.zeros_like(x), sigma_data)
    assert edm_loss(zero_net, x0, torch.Generator().manual_seed(2)).mean() > exact.mean() + 0.05


def test_vdm_loss_of_the_exact_epsilon_predictor_matches_its_closed_form():
    variance, n, gamma_min, gamma_max = 0.09, 40000, -13.3, 5.0
    x0 = math.sqrt(variance) * torch.randn(n, 1, 2, 2, generator=torch.Generator().manual_seed(3))
    losses = vdm_loss(GaussianEpsilon(variance), x0, torch.Generator().manual_seed(4), gamma_min, gamma_max)
    # 1/2 int gamma' E|eps - E[eps|z]|^2/D dt = 1/2 int v/(v + e^gamma) dgamma = 1/2 [gamma - ln(v + e^gamma)]
    antiderivative = lambda g: g - math.log(variance + math.exp(g))
    expected_bpd = 0.5 * (antiderivative(gamma_max) - antiderivative(gamma_min)) / math.log(2)
    assert losses.shape == (n,)
    assert losses.mean().item() == pytest.approx(expected_bpd, abs=4 * losses.std().item() / math.sqrt(n))
    for scale in (0.9, 1.1):  # any other predictor does worse on the same draws
        other = vdm_loss(GaussianEpsilon(variance, scale), x0, torch.Generator().manual_seed(4), gamma_min, gamma_max)
        assert other.mean() > losses.mean()


def test_vdm_antithetic_times_are_evenly_spaced():
    seen = []

    def spy(z, gamma):
        seen.append(gamma.double())
        return torch.zeros_like(z)

    vdm_loss(spy, torch.zeros(8, 1, 2, 2), torch.Generator().manual_seed(0), -13.3, 5.0)
    t = torch.sort((seen[0] + 13.3) / 18.3).values
    assert torch.allclose(t[1:] - t[:-1], torch.full((7,), 1 / 8, dtype=torch.float64), atol=1e-5)


def test_ema_update_formula_and_edm_rampup():
    net = torch.nn.Linear(3, 2)
    ema = EMA(net, decay=0.9, rampup=None)
    old = [p.clone() for p in ema.net.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    assert ema.update(net, step=5) == 0.9
    for p_ema, p_old, p in zip(ema.net.parameters(), old, net.parameters()):
        assert torch.allclose(p_ema, 0.9 * p_old + 0.1 * p)
    ramped = EMA(net, decay=0.999, rampup=0.05)
    assert ramped.beta(0) == 0.0  # the first update copies the network
    assert ramped.beta(100) == pytest.approx(0.5 ** (1 / 5))  # half-life 5% of 100 steps
    assert ramped.beta(10**6) == 0.999
    assert all(not p.requires_grad for p in ramped.net.parameters())


def test_small_unet_outputs_do_not_depend_on_the_batch():
    net = randomised(SmallUNet(**TINY_NET, fourier_exponents=(6,)))
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.linspace(-1, 1, 6)
    with torch.no_grad():
        whole, part = net(x, labels), net(x[2:4], labels[2:4])
    assert whole.shape == x.shape
    assert torch.allclose(whole[2:4], part, atol=1e-5)
    assert torch.count_nonzero(SmallUNet(**TINY_NET)(x, labels)) == 0  # output layer starts at zero
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.zeros(1, 1, 6, 6), torch.zeros(1))


@pytest.mark.parametrize("family", ["edm", "vdm"])
def test_checkpoint_round_trip_gives_identical_denoiser(tmp_path, family):
    meta = dict(expert_constants(family), net=dict(TINY_NET, fourier_exponents=(6, 7) if family == "vdm" else ()),
                training=dict(steps=3))
    net = randomised(build_network(meta))
    path = save_expert(tmp_path / "expert", net, meta)
    assert path.name == "expert.safetensors" and (tmp_path / "expert.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["expert.json", "expert.safetensors"]
    expert = load_expert(tmp_path / "expert.json")
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    s = torch.tensor([0.01, 0.3, 1.0, 20.0])
    reference = load_expert(path).denoise(x, s)
    assert torch.equal(expert.denoise(x, s), reference)
    with torch.no_grad():
        if family == "edm":
            assert torch.equal(reference, net(x, s))
            assert (expert.gamma_min, expert.gamma_max) == pytest.approx((2 * math.log(0.002), 2 * math.log(80)))
        else:
            gamma, alpha = 2 * torch.log(s), (1 + s**2) ** -0.5
            assert torch.allclose(reference, x - s.view(-1, 1, 1, 1) * net(alpha.view(-1, 1, 1, 1) * x, gamma), atol=1e-6)
            assert (expert.gamma_min, expert.gamma_max) == (-13.3, 5.0)
    assert expert.meta["training"] == {"steps": 3} and not any(p.requires_grad for p in expert.net.parameters())


def test_checkpoint_errors_are_clear(tmp_path):
    meta = dict(expert_constants("edm"), net=TINY_NET)
    net = build_network(meta)
    with pytest.raises(ValueError, match="unknown expert family 'ddpm'"):
        save_expert(tmp_path / "x", net, dict(meta, family="ddpm"))
    with pytest.raises(ValueError, match="does not match the network"):
        save_expert(tmp_path / "x", net, dict(meta, net=dict(TINY_NET, channels=(8, 8))))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_expert(tmp_path / "absent")
    path = save_expert(tmp_path / "edm", net, meta)
    record = tmp_path / "edm.json"
    good = record.read_text()
    record.write_text(good[:-10])
    with pytest.raises(ValueError, match="not valid JSON"):
        load_expert(path)
    record.write_text(json.dumps(dict(json.loads(good), family="ddim")))
    with pytest.raises(ValueError, match="unknown expert family 'ddim'"):
        load_expert(path)
    record.write_text(good)
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="is not the file its checkpoint was written with"):
        load_expert(path)
    record.write_text(json.dumps(dict(json.loads(good), weights_sha256=hashlib.sha256(b"garbage").hexdigest())))
    with pytest.raises(ValueError, match="cannot read expert weights"):  # the digest holds, the file never did
        load_expert(path)


def test_make_config_merges_overrides_and_rejects_unknown_names():
    config = make_config("vdm", steps=7, net=dict(channels=(8, 16)))
    assert config.steps == 7 and config.net["channels"] == (8, 16)
    assert config.net["fourier_exponents"] == family_defaults("vdm").net["fourier_exponents"]
    assert make_config("edm").lr == family_defaults("edm").lr
    with pytest.raises(ValueError, match="unknown training hyper-parameters"):
        make_config("edm", learning_rate=1.0)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        make_config("edm", steps=0)
    with pytest.raises(ValueError, match="unknown expert family"):
        make_config("ddpm")


@pytest.fixture(scope="module")
def digits():
    from expertmerge.datasets import load_digits_splits

    splits = load_digits_splits()
    return splits["train"][:96], splits["val"][:32]


@pytest.mark.parametrize("family", ["edm", "vdm"])
def test_tiny_training_run_lowers_the_loss_and_is_deterministic(tmp_path, digits, family):
    settings = dict(steps=40, batch_size=16, eval_every=10, log_every=20, val_repeats=2, warmup_steps=5, lr=2e-3,
                    net=TINY_NET, seed=3)
    records = []
    first = train_expert(family, *digits, out_stem=tmp_path / "a", progress=records.append, **settings)
    second = train_expert(family, *digits, out_stem=tmp_path / "b", progress=lambda record: None, **settings)
    history = first["training"]["history"]
    assert [h["step"] for h in history] == [0, 10, 20, 30, 40]
    assert first["training"]["best_val_loss"] < history[0]["val_loss"]
    assert first["training"]["best_val_loss"] == min(h["val_loss"] for h in history)
    assert [r["step"] for r in records] == [20, 40] and records[-1]["eta_s"] == 0
    weights_a, weights_b = load_file(tmp_path / "a.safetensors"), load_file(tmp_path / "b.safetensors")
    assert all(torch.equal(weights_a[key], weights_b[key]) for key in weights_a)
    assert second["training"]["best_val_loss"] == first["training"]["best_val_loss"]
    loaded = load_expert(first["path"])
    assert loaded.meta["training"]["best_step"] == first["training"]["best_step"] and loaded.image_shape == (1, 8, 8)


def test_training_records_the_requested_gamma_range(tmp_path, digits):
    settings = dict(steps=2, batch_size=8, eval_every=2, log_every=2, val_repeats=1, net=TINY_NET)
    vdm = train_expert("vdm", *digits, out_stem=tmp_path / "vdm", gamma_min=-10.0, gamma_max=4.0, **settings)
    assert (load_expert(vdm["path"]).gamma_min, load_expert(vdm["path"]).gamma_max) == (-10.0, 4.0)
    edm = train_expert("edm", *digits, out_stem=tmp_path / "edm", gamma_min=2 * math.log(0.01), gamma_max=4.0, **settings)
    assert (edm["sigma_min"], edm["sigma_max"]) == pytest.approx((0.01, math.exp(2.0)))
    assert (load_expert(edm["path"]).gamma_min, load_expert(edm["path"]).gamma_max) == pytest.approx((2 * math.log(0.01), 4.0))

"""Pixel conventions: an expert trained on another affine map of the 8-bit levels is seen through the
exact change of variables, and then samples, ODE NLL and VLB are those of the same model defined in
our coordinates."""
import math

import pytest
import torch

from expertmerge.experts import GaussianExpert
from expertmerge.experts.base import RescaledExpert
from expertmerge.experts.lattice import LatticeExpert
from expertmerge.experts.checkpoint import expert_constants, load_expert, save_expert
from expertmerge.images import COMMON_PIXELS, EDM_PIXELS, PixelScale, from_uint8
from expertmerge.likelihood import ode_nll, vlb
from expertmerge.networks.small_unet import SmallUNet
from expertmerge.sampling import sample_ancestral, sample_heun, sample_ode

from conftest import gaussian_data

SHAPE = (1, 2, 2)
GAMMA_MIN, GAMMA_MAX = -13.3, 5.0
A = 256 / 255  # NVlabs' k/127.5 - 1 against our (2k + 1)/256 - 1


def levels_to_data(convention: PixelScale):
    k = torch.tensor([0.0, 1.0, 127.0, 254.0, 255.0], dtype=torch.float64)
    return convention.scale * k + convention.offset


def test_the_conventions_are_the_authors():
    # VDM (and its PyTorch re-implementation): 2 ((k + 0.5) / 256) - 1; NVlabs' EDM: k / 127.5 - 1.
    assert torch.allclose(levels_to_data(COMMON_PIXELS), 2 * (torch.tensor([0, 1, 127, 254, 255.0], dtype=torch.float64) + 0.5) / 256 - 1)
    assert torch.allclose(levels_to_data(EDM_PIXELS), torch.tensor([0, 1, 127, 254, 255.0], dtype=torch.float64) / 127.5 - 1)
    assert levels_to_data(EDM_PIXELS)[[0, -1]].tolist() == [-1.0, 1.0]
    a, b = EDM_PIXELS.from_common()
    assert a == pytest.approx(A, rel=1e-15) and b == 0.0  # the two conventions differ by a scale alone
    # Our decoding of levels is the one both share: the image of x_common under a is NVlabs' level.
    common = from_uint8(torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16, 1)).double().flatten()
    assert torch.allclose(a * common + b, torch.arange(256, dtype=torch.float64) / 127.5 - 1, atol=1e-15)


def edm_convention_gaussian():
    """The same data distribution twice: N(mu, Sigma) in our coordinates, and the Gaussian of x' = a x + b
    on the correspondingly shifted gamma range, wrapped back."""
    mean, cov = gaussian_data(SHAPE)
    a, b = EDM_PIXELS.from_common()
    common = GaussianExpert(mean, cov, GAMMA_MIN, GAMMA_MAX)
    native = GaussianExpert(a * mean + b, a * a * cov, GAMMA_MIN + 2 * math.log(a), GAMMA_MAX + 2 * math.log(a))
    return common, RescaledExpert(native, a, b)


def test_the_change_of_variables_is_exact():
    common, wrapped = edm_convention_gaussian()
    assert wrapped.gamma_min == pytest.approx(GAMMA_MIN, abs=1e-12) and wrapped.gamma_max == pytest.approx(GAMMA_MAX)
    x, s = torch.randn(6, *SHAPE), torch.logspace(-3, 1, 6, dtype=torch.float64)
    torch.testing.assert_close(wrapped.denoise(x, s), common.denoise(x, s), rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("sampler, options", [(sample_ode, {}), (sample_heun, {"steps": 18}),
                                              (sample_ancestral, {"steps": 64})])
def test_a_wrapped_expert_samples_as_the_common_one(sampler, options):
    common, wrapped = edm_convention_gaussian()
    ours, theirs = (sampler(expert, range(8), SHAPE, **options) for expert in (common, wrapped))
    torch.testing.assert_close(theirs.x, ours.x, rtol=1e-4, atol=1e-4)


def test_a_wrapped_expert_has_the_common_ones_likelihood_and_bound():
    common, wrapped = edm_convention_gaussian()
    images = sample_ode(common, range(64), SHAPE).images
    torch.testing.assert_close(ode_nll(wrapped, images).bpd, ode_nll(common, images).bpd, rtol=0, atol=1e-4)
    torch.testing.assert_close(vlb(wrapped, images).bpd, vlb(common, images).bpd, rtol=0, atol=1e-4)


def saturated_levels(n, seed=0):
    """Pixels that sit at 0 or 255 a third of the time each, as saturated CIFAR-10 pixels do."""
    probabilities = torch.full((256,), 1 / 3 / 254, dtype=torch.float64)
    probabilities[[0, 255]] = 1 / 3
    generator = torch.Generator().manual_seed(seed)
    levels = torch.multinomial(probabilities, n * 4, replacement=True, generator=generator)
    return probabilities, levels.to(torch.uint8).reshape(n, 2, 2, 1)


def test_a_sharp_expert_pays_for_an_ignored_convention():
    """Our data fed to an EDM-convention model as if in its own scale (what a merge that ignores conventions
    does) sits up to half a level off its atoms at the extremes: a sharp model pays for it; wrapped, none."""
    a, b = EDM_PIXELS.from_common()
    probabilities, images = saturated_levels(64)
    common = LatticeExpert(probabilities, GAMMA_MIN, GAMMA_MAX)
    native = LatticeExpert(probabilities, GAMMA_MIN + 2 * math.log(a), GAMMA_MAX + 2 * math.log(a), EDM_PIXELS)
    exact, wrapped = ode_nll(common, images).mean(), ode_nll(RescaledExpert(native, a, b), images).mean()
    naive = ode_nll(LatticeExpert(probabilities, GAMMA_MIN, GAMMA_MAX, EDM_PIXELS), images).mean()
    assert abs(wrapped - exact) < 1e-3
    assert naive - exact > 0.5  # bits/dim


def test_a_checkpoint_that_records_its_convention_loads_wrapped(tmp_path):
    torch.manual_seed(0)
    net = SmallUNet(img_channels=1, patch=2, channels=(8, 16), emb_channels=32)
    meta = dict(expert_constants("vdm", -10.0, 4.0), net=dict(img_channels=1, patch=2, channels=[8, 16], emb_channels=32))
    save_expert(tmp_path / "plain", net, meta)
    save_expert(tmp_path / "edm_scale", net, dict(meta, pixels=EDM_PIXELS.record()))
    plain, wrapped = load_expert(tmp_path / "plain"), load_expert(tmp_path / "edm_scale")
    assert not isinstance(plain, RescaledExpert) and isinstance(wrapped, RescaledExpert)
    assert wrapped.gamma_min == pytest.approx(-10.0 - 2 * math.log(A)) and wrapped.meta["pixels"] == EDM_PIXELS.record()
    x, s = torch.randn(3, 1, 8, 8), torch.tensor([0.01, 0.5, 3.0], dtype=torch.float64)
    torch.testing.assert_close(wrapped.denoise(x, s), plain.denoise(A * x, A * s) / A)


@pytest.mark.parametrize("record", [{"scale": 0, "offset": 0}, {"scale": "x", "offset": 0}, {"offset": 1}])
def test_a_bad_convention_is_named(record):
    with pytest.raises(ValueError, match="pixel convention"):
        PixelScale.from_record(record)

"""Every preconditioning NVlabs' training code pickles (VPPrecond, VEPrecond, EDMPrecond) imports as an
expert that denoises as EDM's Table 1 says, records EDM's pixel convention and its native noise range,
and refuses a configured range outside that; an EDMPrecond pickle is interchangeable with our own
`edm-imagenet32` training of the same network."""
import math

import numpy as np
import pytest
import torch

from test_imports import SMALL_DDPMPP, nvlabs_pickle, randomized
from test_train_recipe import TINY, images

from expertmerge.experts import edm
from expertmerge.experts.checkpoint import load_expert
from expertmerge.experts.edm import EDMPrecond
from expertmerge.experts.imports import import_expert
from expertmerge.images import EDM_PIXELS
from expertmerge.networks.ddpmpp import SongUNet
from expertmerge.networks.nvlabs_precond import VEPrecond
from expertmerge.train_recipe import WEIGHTS_NAME, train

# NVlabs' train.py: --arch ddpmpp (SMALL_DDPMPP) and --arch ncsnpp, at toy size.
SMALL_NCSNPP = dict(SMALL_DDPMPP, embedding_type="fourier", encoder_type="residual", channel_mult_noise=2,
                    resample_filter=[1, 3, 3, 1])
# The attributes NVlabs' constructors store besides img_resolution, img_channels, label_dim, use_fp16, model.
NVLABS_ATTRIBUTES = {"VEPrecond": dict(sigma_min=0.02, sigma_max=100),
                     "EDMPrecond": dict(sigma_min=0, sigma_max=float("inf"), sigma_data=0.5)}
SIGMAS = {"VEPrecond": [0.02, 0.3, 2.0, 17.0, 100.0], "EDMPrecond": [0.002, 0.1, 0.5, 3.0, 80.0]}


def nvlabs_network(class_name: str, init_kwargs: dict) -> torch.nn.Module:
    """A module laid out as NVlabs' `class_name(**init_kwargs)`: its attributes, and `model`, the SongUNet."""
    module = type(class_name, (torch.nn.Module,), {})()
    model = dict(init_kwargs)
    for name, default in dict(img_resolution=None, img_channels=None, label_dim=0, use_fp16=False,
                              **NVLABS_ATTRIBUTES[class_name]).items():
        setattr(module, name, model.pop(name, default))
    model.pop("model_type")
    module.model = SongUNet(img_resolution=module.img_resolution, in_channels=module.img_channels,
                            out_channels=module.img_channels, label_dim=module.label_dim, **model)
    return module


def pickled(tmp_path, persistence, class_name: str, init_kwargs: dict, seed: int = 0):
    """(path, the pickled module) of an NVlabs-format pickle of `class_name` with random weights."""
    torch.manual_seed(seed)  # NCSN++'s Fourier frequencies are a random buffer
    net = randomized(nvlabs_network(class_name, init_kwargs), seed)
    path = tmp_path / f"{class_name}.pkl"
    nvlabs_pickle(path, net, init_kwargs, persistence._reconstruct_persistent_obj, tmp_path / "executed")
    return path, net


def imported(path, out, sigma_range):
    """Import `path` on the sigma range; (meta, the expert in the network's own coordinates)."""
    gamma_min, gamma_max = (2 * math.log(s) for s in sigma_range)
    meta = import_expert(path, "edm-pickle", out, family="edm", gamma_min=gamma_min, gamma_max=gamma_max,
                         image_shape=(3, 8, 8))
    loaded = load_expert(out)
    return meta, edm.expert(loaded.meta, loaded.net)  # without the change of pixel convention


def table_1(class_name: str, sigma: torch.Tensor, sigma_data: float = 0.5):
    """(c_skip, c_out, c_in, c_noise) of EDM's Table 1, in float64."""
    s = sigma.double()
    if class_name == "VEPrecond":  # D = x + sigma F(x; ln(sigma/2))
        return torch.ones_like(s), s, torch.ones_like(s), torch.log(0.5 * s)
    root = torch.sqrt(s**2 + sigma_data**2)
    return sigma_data**2 / root**2, s * sigma_data / root, 1 / root, torch.log(s) / 4


def reference_denoise(class_name: str, model, x: torch.Tensor, sigma: torch.Tensor, sigma_data: float = 0.5):
    """D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) with the raw network F = `model` (float32)."""
    c_skip, c_out, c_in, c_noise = (c.reshape(-1, 1, 1, 1) for c in table_1(class_name, sigma, sigma_data))
    with torch.no_grad():
        F_x = model((c_in * x.double()).float(), c_noise.flatten().float()).double()
    return c_skip * x.double() + c_out * F_x


@pytest.mark.parametrize("class_name, architecture, sigma_data", [
    ("VEPrecond", SMALL_NCSNPP, None), ("EDMPrecond", SMALL_DDPMPP, 0.5), ("EDMPrecond", SMALL_NCSNPP, 0.6)])
def test_pickled_preconditioning_denoises_as_table_1(tmp_path, persistence, class_name, architecture, sigma_data):
    init_kwargs = dict(architecture, use_fp16=False)
    if sigma_data is not None:
        init_kwargs["sigma_data"] = sigma_data
    path, source = pickled(tmp_path, persistence, class_name, init_kwargs)
    sigmas = SIGMAS[class_name]
    meta, expert = imported(path, tmp_path / "expert", (sigmas[0], sigmas[-1]))
    assert not (tmp_path / "executed").exists()
    assert meta["network"] == {"VEPrecond": "VEPrecond", "EDMPrecond": "EDMPrecond(SongUNet)"}[class_name]
    assert meta["imported"]["class_name"] == class_name and meta["imported"]["ignored_kwargs"] == {"use_fp16": False}
    if class_name == "EDMPrecond":
        assert meta["sigma_data"] == sigma_data  # the pickle's, in the checkpoint's constants
        assert meta["net"]["in_channels"] == meta["net"]["out_channels"] == 3 and meta["net"]["label_dim"] == 0

    x = torch.randn(len(sigmas), 3, 8, 8, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor(sigmas, dtype=torch.float64)
    expected = reference_denoise(class_name, source.model, x, sigma, sigma_data or 0.5)
    scale = expected.flatten(1).abs().amax(dim=1).reshape(-1, 1, 1, 1)
    assert ((expert.denoise(x, sigma).double() - expected).abs() / scale).max() < 2e-6  # float32 precision


@pytest.mark.parametrize("class_name, kwargs, native", [
    ("VPPrecond", {}, [math.sqrt(math.expm1(0.5 * 19.9e-10 + 0.1e-5)), math.sqrt(math.expm1(0.5 * 19.9 + 0.1))]),
    ("VPPrecond", dict(beta_d=10.0, beta_min=0.5, epsilon_t=1e-3),
     [math.sqrt(math.expm1(0.5 * 10e-6 + 0.5e-3)), math.sqrt(math.expm1(5.5))]),
    ("VEPrecond", {}, [0.02, 100.0]),
    ("VEPrecond", dict(sigma_min=0.01, sigma_max=50), [0.01, 50.0]),
    ("EDMPrecond", {}, [0.0, None]),  # NVlabs' defaults 0 and inf (JSON null)
    ("EDMPrecond", dict(sigma_min=0.002, sigma_max=80), [0.002, 80.0])])
def test_each_import_records_edm_pixels_and_its_native_range(tmp_path, persistence, class_name, kwargs, native):
    init_kwargs = dict(SMALL_DDPMPP, **kwargs)
    if class_name == "VPPrecond":
        from expertmerge.networks.nvlabs_precond import VPPrecond
        net = randomized(VPPrecond(**init_kwargs), seed=0)
        path = tmp_path / "vp.pkl"
        nvlabs_pickle(path, net, init_kwargs, persistence._reconstruct_persistent_obj, tmp_path / "executed")
    else:
        path, _ = pickled(tmp_path, persistence, class_name, init_kwargs)
    inside = (native[0] * 1.5 or 0.01, native[1] / 2 if native[1] else 1e4)
    meta, _ = imported(path, tmp_path / "expert", inside)
    assert meta["pixels"] == EDM_PIXELS.record() == {"scale": 1 / 127.5, "offset": -1.0}
    recorded = meta["imported"]["native_sigma"]
    assert [value is None for value in recorded] == [value is None for value in native]
    assert [value for value in recorded if value is not None] == pytest.approx([v for v in native if v is not None],
                                                                               rel=1e-9)
    assert load_expert(tmp_path / "expert").meta["imported"]["native_sigma"] == meta["imported"]["native_sigma"]


@pytest.mark.parametrize("class_name, kwargs, configured, native", [
    ("VEPrecond", {}, (0.002, 80.0), "[0.02, 100]"),         # EDM's range, below VE's
    ("VEPrecond", {}, (0.02, 150.0), "[0.02, 100]"),         # above it
    ("VPPrecond", {}, (0.0005, 80.0), "[0.0010005, 152.167]"),
    ("EDMPrecond", dict(sigma_min=0.002, sigma_max=80), (0.002, 100.0), "[0.002, 80]")])
def test_a_range_outside_the_native_one_is_refused(tmp_path, persistence, class_name, kwargs, configured, native):
    init_kwargs = dict(SMALL_DDPMPP, **kwargs)
    if class_name == "VPPrecond":
        from expertmerge.networks.nvlabs_precond import VPPrecond
        path = tmp_path / "vp.pkl"
        nvlabs_pickle(path, randomized(VPPrecond(**init_kwargs), 0), init_kwargs,
                      persistence._reconstruct_persistent_obj, tmp_path / "x")
    else:
        path, _ = pickled(tmp_path, persistence, class_name, init_kwargs)
    low, high = configured
    with pytest.raises(ValueError, match="goes outside") as refused:
        imported(path, tmp_path / "expert", configured)
    message = str(refused.value)
    assert f"[{low:g}, {high:g}]" in message and native in message and class_name in message
    assert not list(tmp_path.glob("expert.*"))


def test_the_native_range_itself_is_accepted_to_the_last_ulp(tmp_path, persistence):
    path, _ = pickled(tmp_path, persistence, "VEPrecond", dict(SMALL_NCSNPP))
    meta, expert = imported(path, tmp_path / "expert", (0.02, 100.0))  # through gamma = 2 ln sigma and back
    assert expert.noise_level_min == pytest.approx(0.02, rel=1e-12) and meta["imported"]["native_sigma"] == [0.02, 100]


@pytest.mark.parametrize("kwargs", [dict(model_type="DhariwalUNet"), dict(label_dim=10), {}])
def test_unsupported_edm_precond_gets_one_clear_error(tmp_path, persistence, kwargs):
    path = tmp_path / "edm.pkl"
    init_kwargs = {key: value for key, value in dict(SMALL_DDPMPP, **kwargs).items() if kwargs or key != "model_type"}
    nvlabs_pickle(path, nvlabs_network("EDMPrecond", SMALL_DDPMPP), init_kwargs,  # {}: NVlabs' default DhariwalUNet
                  persistence._reconstruct_persistent_obj, tmp_path / "x")
    with pytest.raises(ValueError, match=r"supported: VPPrecond, VEPrecond or EDMPrecond, each of model_type "
                                         r"'SongUNet' \(EDMPrecond with label_dim 0\)"):
        imported(path, tmp_path / "expert", (0.002, 80.0))


def test_other_nvlabs_classes_are_refused_naming_the_supported_ones(tmp_path, persistence):
    net = nvlabs_network("VEPrecond", SMALL_DDPMPP)
    type(net).__name__ = "iDDPMPrecond"
    nvlabs_pickle(tmp_path / "i.pkl", net, SMALL_DDPMPP, persistence._reconstruct_persistent_obj, tmp_path / "x")
    with pytest.raises(ValueError, match="'iDDPMPrecond' network; supported: VPPrecond, VEPrecond or EDMPrecond"):
        imported(tmp_path / "i.pkl", tmp_path / "expert", (0.002, 80.0))


def test_edm_precond_computes_in_float32_as_nvlabs():
    """NVlabs casts sigma to float32 and computes every coefficient from it: so do we, bit for bit."""
    seen = {}

    def model(x, noise_labels):
        seen.update(x=x, noise_labels=noise_labels)
        return torch.tanh(x)

    sigma = torch.tensor(np.geomspace(0.002, 80, 64))  # float64, as the samplers pass it
    x = torch.randn(64, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    out = EDMPrecond(model, sigma_data=0.5)(x, sigma)
    s = sigma.float().reshape(-1, 1, 1, 1)
    c_in = 1 / (0.25 + s**2).sqrt()
    assert torch.equal(seen["noise_labels"], s.flatten().log() / 4) and torch.equal(seen["x"], c_in * x)
    expected = 0.25 / (s**2 + 0.25) * x + s * 0.5 / (s**2 + 0.25).sqrt() * torch.tanh(c_in * x)
    assert out.dtype == torch.float32 and torch.equal(out, expected)
    # the float64 coefficients, rounded, are not what NVlabs feeds: the difference is real, if tiny
    assert not torch.equal((sigma.log() / 4).float(), s.flatten().log() / 4)


def test_ve_precond_refuses_other_models():
    with pytest.raises(ValueError, match="model_type='DhariwalUNet' is not supported"):
        VEPrecond(8, 3, model_type="DhariwalUNet")


def test_an_edm_precond_pickle_is_interchangeable_with_our_recipe_training(tmp_path, persistence):
    torch.set_num_threads(1)
    train(TINY["edm"], images(8, 8), tmp_path / "run", max_steps=1, batch_size=4)
    ours = load_expert(tmp_path / "run" / WEIGHTS_NAME)
    # What NVlabs' training loop constructs for the same network: interface + model arguments.
    model = {key: value for key, value in ours.meta["net"].items() if key not in ("in_channels", "out_channels")}
    init_kwargs = dict(model, img_channels=3, use_fp16=False, model_type="SongUNet")
    theirs = nvlabs_network("EDMPrecond", init_kwargs)
    theirs.load_state_dict(ours.net.state_dict(), strict=True)
    nvlabs_pickle(tmp_path / "edm.pkl", theirs, init_kwargs, persistence._reconstruct_persistent_obj, tmp_path / "x")

    meta = import_expert(tmp_path / "edm.pkl", "edm-pickle", tmp_path / "imported", family="edm",
                         gamma_min=ours.meta["gamma_min"], gamma_max=ours.meta["gamma_max"], image_shape=(3, 8, 8))
    loaded = load_expert(tmp_path / "imported")
    assert meta["network"] == ours.meta["network"] == "EDMPrecond(SongUNet)" and meta["net"] == ours.meta["net"]
    assert meta["sigma_data"] == ours.meta["sigma_data"]
    assert list(loaded.net.state_dict()) == list(ours.net.state_dict())
    # Both trained on NVlabs' pixels (k/127.5 - 1) and record it: the same expert, in our coordinates too.
    assert ours.meta["pixels"] == loaded.meta["pixels"] == EDM_PIXELS.record()
    x, sigma = torch.randn(5, 3, 8, 8), torch.tensor([0.002, 0.1, 0.5, 3.0, 80.0])
    native = edm.expert(loaded.meta, loaded.net)
    assert torch.equal(native.denoise(x, sigma), edm.expert(ours.meta, ours.net).denoise(x, sigma))
    assert torch.equal(loaded.denoise(x, sigma), ours.denoise(x, sigma))
    assert (loaded.gamma_min, loaded.gamma_max) == (ours.gamma_min, ours.gamma_max)

"""The EDM family (Karras et al. 2022): a preconditioned denoiser D(x; sigma) and EDM's loss.

EDM works in VE coordinates, so sigma is our noise level s and D is used as is. Its networks: the
demo's SmallUNet and the DDPM++ SongUNet, each inside `EDMPrecond` (Table 1), and NVlabs' own
`VPPrecond` (the published CIFAR-10 checkpoint) and `VEPrecond`. An "edm-pickle" of NVlabs' training
code holds one of VPPrecond, VEPrecond or EDMPrecond; each imports as the network above that computes
as it does (an EDMPrecond of a SongUNet as "EDMPrecond(SongUNet)"), with its pixel convention
(`images.EDM_PIXELS`) and its native noise range recorded.
"""
from __future__ import annotations

import functools
import math

import torch

from ..images import EDM_PIXELS
from ..networks.ddpmpp import DDPMPP_PRESETS, SongUNet
from ..networks.nvlabs_precond import VEPrecond, VPPrecond
from ..networks.small_unet import SmallUNet
from ..noise import gamma_to_noise_level, noise_level_to_gamma
from .base import Expert
from .edm_pickle import read_edm_snapshot
from .registry import get_family

SIGMA = get_family("edm").noise_range      # sigma in [0.002, 80] (Table 1)
P_MEAN, P_STD = -1.2, 1.2                  # Table 1: ln(sigma) ~ N(P_mean, P_std^2) in training
LOSS = "EDM loss (Eq. 8), per pixel"
IGNORED_KWARGS = ("use_fp16",)             # NVlabs' constructor arguments that change nothing in float32


class EDMExpert(Expert):
    """Wrap `net(x, sigma) -> D` (x float32 [N,C,H,W], sigma float32 [N]) as an expert."""

    def __init__(self, net, sigma_min: float = SIGMA["sigma_min"], sigma_max: float = SIGMA["sigma_max"]):
        super().__init__(net, noise_level_to_gamma(sigma_min), noise_level_to_gamma(sigma_max))

    def _denoise(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return self.net(x, s.to(x.dtype)).to(x.dtype)


def constants(gamma_min: float | None = None, gamma_max: float | None = None, sigma_data: float = 0.5) -> dict:
    """The checkpoint fields of an EDM expert used on [gamma_min, gamma_max] (default: Table 1's sigma
    range; its training noise is log-normal either way)."""
    sigma_min = SIGMA["sigma_min"] if gamma_min is None else gamma_to_noise_level(gamma_min)
    sigma_max = SIGMA["sigma_max"] if gamma_max is None else gamma_to_noise_level(gamma_max)
    return dict(family="edm", sigma_data=float(sigma_data), sigma_min=float(sigma_min), sigma_max=float(sigma_max),
                gamma_min=noise_level_to_gamma(sigma_min), gamma_max=noise_level_to_gamma(sigma_max))


def expert(meta: dict, net: torch.nn.Module) -> EDMExpert:
    return EDMExpert(net, sigma_min=float(meta["sigma_min"]), sigma_max=float(meta["sigma_max"]))


class EDMPrecond(torch.nn.Module):
    """EDM's preconditioning around a raw network F (Karras et al. 2022, Table 1, Eq. 7):
    D(x; sigma) = c_skip x + c_out F(c_in x; c_noise), with
    c_skip = sigma_data^2/(sigma^2 + sigma_data^2), c_out = sigma sigma_data/sqrt(sigma^2 + sigma_data^2),
    c_in = 1/sqrt(sigma^2 + sigma_data^2), c_noise = ln(sigma)/4.

    `model(x, noise_labels)` is the raw network; forward(x, sigma) returns D (float32) for sigma a
    float or a tensor of shape [N]. As NVlabs' EDMPrecond it computes in float32: x and sigma are cast
    to float32 and the coefficients computed from the float32 sigma, so an EDMPrecond of a SongUNet
    gives what NVlabs' own gives with the same weights.
    """

    def __init__(self, model: torch.nn.Module, sigma_data: float = 0.5):
        super().__init__()
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data!r}")
        self.model, self.sigma_data = model, float(sigma_data)

    def coefficients(self, sigma: torch.Tensor):
        """(c_skip, c_out, c_in, c_noise) at sigma, in sigma's dtype and shape (forward passes float32)."""
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        c_in = 1 / (sd2 + sigma**2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(x.shape[0])
        per_image = (-1, *([1] * (x.ndim - 1)))
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma.reshape(per_image))
        F_x = self.model(c_in * x, c_noise.flatten())
        return c_skip * x + c_out * F_x.to(torch.float32)


def edm_loss(precond_net, x0: torch.Tensor, generator: torch.Generator, p_mean: float = P_MEAN,
             p_std: float = P_STD, sigma_data: float | None = None) -> torch.Tensor:
    """EDM's loss per image (Eq. 8, Table 1), averaged over pixels: lambda(sigma) |D(x0 + n; sigma) - x0|^2
    with lambda(sigma) = (sigma^2 + sigma_data^2)/(sigma sigma_data)^2. sigma_data defaults to the
    preconditioned net's (pass it for a wrapped net, e.g. under DDP)."""
    n = x0.shape[0]
    sigma = (torch.randn(n, generator=generator, dtype=torch.float64) * p_std + p_mean).exp().to(x0.device)
    sigma_data = precond_net.sigma_data if sigma_data is None else sigma_data
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    noise = torch.randn(x0.shape, generator=generator).to(x0.device) * sigma.to(x0.dtype).view(-1, 1, 1, 1)
    denoised = precond_net(x0 + noise, sigma)
    return weight.to(x0.dtype) * (denoised - x0).square().flatten(1).mean(dim=1)


def loss(meta: dict):
    return functools.partial(edm_loss, sigma_data=float(meta["sigma_data"]))


NETWORKS = {
    "SmallUNet": lambda meta, net: EDMPrecond(SmallUNet(**net), sigma_data=float(meta["sigma_data"])),
    "VPPrecond": lambda meta, net: VPPrecond(**net),
    "VEPrecond": lambda meta, net: VEPrecond(**net),
    "EDMPrecond(SongUNet)": lambda meta, net: EDMPrecond(SongUNet(**net), sigma_data=float(meta["sigma_data"])),
}


def recipe_network(recipe, img_channels: int) -> dict:
    """NVlabs' `--arch ddpmpp --precond edm`: the preset's SongUNet inside EDMPrecond."""
    preset = {key: value for key, value in DDPMPP_PRESETS[recipe.preset].items() if key != "img_channels"}
    return dict(network="EDMPrecond(SongUNet)", net={**preset, "in_channels": img_channels, "out_channels": img_channels, **recipe.network})


# EDM (CIFAR-10 DDPM++): Adam lr 1e-3 ramped up over the first 5% of training (of the demo's 5000
# steps), dropout 0.13.
TRAINING = dict(lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0, warmup_steps=250, net=dict(dropout=0.13))


# NVlabs' classes an edm-pickle may hold -> (our network, NVlabs' default model_type, the default native
# sigma range where the constructor arguments do not set it; VP's follows from beta_d, beta_min, epsilon_t).
PICKLED_NETWORKS = {"VPPrecond": ("VPPrecond", "SongUNet", None),
                    "VEPrecond": ("VEPrecond", "SongUNet", (0.02, 100.0)),
                    "EDMPrecond": ("EDMPrecond(SongUNet)", "DhariwalUNet", (0.0, math.inf))}
SUPPORTED_PICKLES = "VPPrecond, VEPrecond or EDMPrecond, each of model_type 'SongUNet' (EDMPrecond with label_dim 0)"
RANGE_RTOL = 1e-9  # a range written in gamma comes back as sigma = exp(gamma/2) to a few ulps


def import_edm_pickle(path, *, checksum: str | None, gamma_min: float, gamma_max: float, network: dict | None):
    """An NVlabs EDM network pickle's `ema` network (VPPrecond, VEPrecond or EDMPrecond of a SongUNet),
    read without running code from it; the pickle reader hashes the very bytes it unpickles, so the
    checksum is checked there. The configured range must lie inside the network's native sigma range."""
    if network:
        raise ValueError("an edm-pickle records its own network; --network is not allowed with it")
    sha256 = None
    if checksum is not None:
        algorithm, _, sha256 = checksum.partition(":")
        if algorithm.lower() != "sha256":
            raise ValueError(f"an EDM pickle is checked by its sha256; got a {algorithm!r} checksum")
    snapshot = read_edm_snapshot(path, expected_sha256=sha256)
    if snapshot.class_name not in PICKLED_NETWORKS:
        raise ValueError(f"{path} holds a {snapshot.class_name!r} network; supported: {SUPPORTED_PICKLES}")
    kwargs = {key: value for key, value in snapshot.init_kwargs.items() if key not in IGNORED_KWARGS}
    name, model_type, native_default = PICKLED_NETWORKS[snapshot.class_name]
    model_type, label_dim = kwargs.get("model_type", model_type), kwargs.get("label_dim", 0)
    if model_type != "SongUNet" or (snapshot.class_name == "EDMPrecond" and label_dim):
        raise ValueError(f"{path} holds a {snapshot.class_name} of model_type {model_type!r} with label_dim "
                         f"{label_dim!r}; supported: {SUPPORTED_PICKLES}")
    net_kwargs, constants = _pickled_network(path, snapshot.class_name, kwargs)
    try:
        net = NETWORKS[name](constants, net_kwargs)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: our {name} does not take the pickle's {snapshot.class_name} constructor "
                         f"arguments: {error}") from error
    if native_default is None:
        native = (net.sigma_min, net.sigma_max)
    else:
        native = (float(kwargs.get("sigma_min", native_default[0])), float(kwargs.get("sigma_max", native_default[1])))
    _check_range(path, snapshot.class_name, native, gamma_min, gamma_max)
    ignored = {key: snapshot.init_kwargs[key] for key in IGNORED_KWARGS if key in snapshot.init_kwargs}
    provenance = dict(network=name, net=net_kwargs, sha256=snapshot.sha256, class_name=snapshot.class_name,
                      ignored_kwargs=ignored, pixels=EDM_PIXELS.record(),
                      native_sigma=[value if math.isfinite(value) else None for value in native])  # JSON: inf -> null
    if constants:
        provenance["constants"] = constants
    return net, snapshot.state, provenance


def _pickled_network(path, class_name: str, kwargs: dict) -> tuple[dict, dict]:
    """(our network's hyper-parameters, the checkpoint constants the pickle fixes) from NVlabs'
    constructor arguments. VP and VE take them as they are; an EDMPrecond's model becomes the SongUNet
    inside our EDMPrecond, its sigma_data a constant."""
    if class_name != "EDMPrecond":
        return kwargs, {}
    if "img_channels" not in kwargs:
        raise ValueError(f"{path}: the EDMPrecond's constructor arguments lack 'img_channels'")
    channels = kwargs["img_channels"]
    model = {key: value for key, value in kwargs.items()
             if key not in ("img_channels", "sigma_min", "sigma_max", "sigma_data", "model_type")}
    return dict(model, in_channels=channels, out_channels=channels, label_dim=0), \
        dict(sigma_data=float(kwargs.get("sigma_data", 0.5)))


def _check_range(path, class_name: str, native: tuple, gamma_min: float, gamma_max: float) -> None:
    """The configured [gamma_min, gamma_max] (the network's own sigma = exp(gamma/2)) must lie inside
    the sigma range the network was trained on."""
    low, high = gamma_to_noise_level(gamma_min), gamma_to_noise_level(gamma_max)
    if low < native[0] * (1 - RANGE_RTOL) or high > native[1] * (1 + RANGE_RTOL):
        raise ValueError(f"{path}: the configured range sigma in [{low:.6g}, {high:.6g}] (gamma in "
                         f"[{gamma_min:.6g}, {gamma_max:.6g}]) goes outside the {class_name}'s native range sigma "
                         f"in [{native[0]:.6g}, {native[1]:.6g}]; configure a range inside it")


IMPORTERS = {"edm-pickle": import_edm_pickle}

"""The EDM family (Karras et al. 2022): a preconditioned denoiser D(x; sigma) and EDM's loss.

EDM works in VE coordinates, so sigma is our noise level s and D is used as is. Its networks: the
demo's SmallUNet and the DDPM++ SongUNet, each inside `EDMPrecond` (Table 1), and NVlabs' own
`VPPrecond`, which the published CIFAR-10 checkpoint (an "edm-pickle") holds.
"""
from __future__ import annotations

import functools

import torch

from ..networks.ddpmpp import DDPMPP_PRESETS, SongUNet, VPPrecond
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

    `model(x, noise_labels)` is the raw network; forward(x, sigma) returns D for sigma a float
    or a tensor of shape [N].
    """

    def __init__(self, model: torch.nn.Module, sigma_data: float = 0.5):
        super().__init__()
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data!r}")
        self.model, self.sigma_data = model, float(sigma_data)

    def coefficients(self, sigma: torch.Tensor):
        """(c_skip, c_out, c_in, c_noise) at sigma, in sigma's dtype and shape."""
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        c_in = 1 / (sd2 + sigma**2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1).expand(x.shape[0])
        c_skip, c_out, c_in, c_noise = (c.to(x.dtype) for c in self.coefficients(sigma))
        per_image = (-1, *([1] * (x.ndim - 1)))
        F_x = self.model(c_in.reshape(per_image) * x, c_noise)
        return c_skip.reshape(per_image) * x + c_out.reshape(per_image) * F_x.to(x.dtype)


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
    "EDMPrecond(SongUNet)": lambda meta, net: EDMPrecond(SongUNet(**net), sigma_data=float(meta["sigma_data"])),
}


def recipe_network(recipe, img_channels: int) -> dict:
    """NVlabs' `--arch ddpmpp --precond edm`: the preset's SongUNet inside EDMPrecond."""
    preset = {key: value for key, value in DDPMPP_PRESETS[recipe.preset].items() if key != "img_channels"}
    return dict(network="EDMPrecond(SongUNet)", net={**preset, "in_channels": img_channels, "out_channels": img_channels, **recipe.network})


# EDM (CIFAR-10 DDPM++): Adam lr 1e-3 ramped up over the first 5% of training (of the demo's 5000
# steps), dropout 0.13.
TRAINING = dict(lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0, warmup_steps=250, net=dict(dropout=0.13))


def import_edm_pickle(path, *, checksum: str | None, gamma_min: float, gamma_max: float, network: dict | None):
    """An NVlabs EDM network pickle's `ema` VPPrecond, read without running code from it; the pickle
    reader hashes the very bytes it unpickles, so the checksum is checked there."""
    if network:
        raise ValueError("an edm-pickle records its own network; --network is not allowed with it")
    sha256 = None
    if checksum is not None:
        algorithm, _, sha256 = checksum.partition(":")
        if algorithm.lower() != "sha256":
            raise ValueError(f"an EDM pickle is checked by its sha256; got a {algorithm!r} checksum")
    snapshot = read_edm_snapshot(path, expected_sha256=sha256)
    if snapshot.class_name != "VPPrecond":
        raise ValueError(f"{path} holds a {snapshot.class_name!r} network; only VPPrecond (the paper's "
                         "edm-cifar10-32x32-uncond-vp) is supported")
    kwargs = {key: value for key, value in snapshot.init_kwargs.items() if key not in IGNORED_KWARGS}
    try:
        net = VPPrecond(**kwargs)
    except TypeError as error:
        raise ValueError(f"{path}: our VPPrecond does not take the pickle's constructor arguments: {error}") from error
    ignored = {key: snapshot.init_kwargs[key] for key in IGNORED_KWARGS if key in snapshot.init_kwargs}
    return net, snapshot.state, dict(network="VPPrecond", net=kwargs, sha256=snapshot.sha256,
                                     class_name=snapshot.class_name, ignored_kwargs=ignored)


IMPORTERS = {"edm-pickle": import_edm_pickle}

"""The VDM family (Kingma et al. 2021): an epsilon-prediction network fed gamma on a VP path,
trained with VDM's continuous-time diffusion loss.

With gamma = 2 log s the VP state is z = alpha*x, and since x = x0 + s*eps,
D = (z - sigma*eps_hat)/alpha = x - s*eps_hat. Its networks: the demo's SmallUNet (fed gamma
normalised as VDM does) and the VDM re-implementation's U-Net, whose `model.pt` a
"vdm-checkpoint" is.
"""
from __future__ import annotations

import functools
import math
import re

import torch

from ..downloads import verify_file
from ..networks.small_unet import SmallUNet
from ..networks.vdm_unet import VDM_PRESETS, VDMUNet, load_vdm_checkpoint_state
from ..noise import linear_gamma, vp_alpha_from_noise_level, vp_alpha_sigma
from .base import Expert, broadcast_level
from .registry import get_family

GAMMA = get_family("vdm").noise_range  # the fixed linear schedule gamma in [-13.3, 5]
LABEL_RANGE = 1000.0  # VDM feeds (gamma - gamma_min)/(gamma_max - gamma_min) * 1000 to its embedding
LOSS = "VDM diffusion loss, bits/dim"


class VDMExpert(Expert):
    """Wrap `net(z, gamma) -> eps_hat` (z float32 [N,C,H,W], gamma float32 [N]) as an expert."""

    def __init__(self, net, gamma_min: float = GAMMA["gamma_min"], gamma_max: float = GAMMA["gamma_max"]):
        super().__init__(net, gamma_min, gamma_max)

    def _denoise(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        gamma = 2 * torch.log(s)
        alpha = vp_alpha_from_noise_level(s)
        eps_hat = self.net(broadcast_level(alpha, x) * x, gamma.to(x.dtype))
        return x - broadcast_level(s, x) * eps_hat.to(x.dtype)


def constants(gamma_min: float | None = None, gamma_max: float | None = None) -> dict:
    """The checkpoint fields of a VDM expert: its schedule's gamma range, which is also its valid range."""
    return dict(family="vdm", gamma_min=float(GAMMA["gamma_min"] if gamma_min is None else gamma_min),
                gamma_max=float(GAMMA["gamma_max"] if gamma_max is None else gamma_max))


def expert(meta: dict, net: torch.nn.Module) -> VDMExpert:
    return VDMExpert(net, gamma_min=float(meta["gamma_min"]), gamma_max=float(meta["gamma_max"]))


def vdm_loss(eps_net, x0: torch.Tensor, generator: torch.Generator, gamma_min: float = GAMMA["gamma_min"],
             gamma_max: float = GAMMA["gamma_max"], antithetic: bool = True) -> torch.Tensor:
    """VDM's continuous-time diffusion loss per image in bits/dim (Eq. 17, linear gamma):
    1/2 gamma'(t) |eps - eps_hat(z_t; gamma_t)|^2 / (D ln 2), z_t = alpha_t x0 + sigma_t eps.
    With a fixed schedule the ELBO's prior and reconstruction terms do not depend on the network."""
    n, dims = x0.shape[0], x0[0].numel()
    if antithetic:  # VDM: t_i = (u0 + i/n) mod 1, a stratified draw of t for the batch
        t = (torch.rand((), generator=generator, dtype=torch.float64) + torch.arange(n, dtype=torch.float64) / n) % 1
    else:
        t = torch.rand(n, generator=generator, dtype=torch.float64)
    gamma = linear_gamma(t, gamma_min, gamma_max)
    alpha, sigma = (c.to(x0).view(-1, 1, 1, 1) for c in vp_alpha_sigma(gamma))
    eps = torch.randn(x0.shape, generator=generator).to(x0.device)
    eps_hat = eps_net(alpha * x0 + sigma * eps, gamma.to(x0))
    squared = (eps - eps_hat).square().flatten(1).sum(dim=1)
    return 0.5 * (gamma_max - gamma_min) * squared / (dims * math.log(2))


def loss(meta: dict):
    return functools.partial(vdm_loss, gamma_min=meta["gamma_min"], gamma_max=meta["gamma_max"])


def _small_unet(meta: dict, net: dict) -> torch.nn.Module:
    gamma_min, gamma_max = float(meta["gamma_min"]), float(meta["gamma_max"])
    if not (math.isfinite(gamma_min) and math.isfinite(gamma_max) and gamma_min < gamma_max):
        raise ValueError(f"VDM gamma range must be finite with gamma_min < gamma_max, got [{gamma_min}, {gamma_max}]")
    return SmallUNet(**net, label_offset=gamma_min, label_scale=LABEL_RANGE / (gamma_max - gamma_min))


NETWORKS = {
    "SmallUNet": _small_unet,
    "VDMUNet": lambda meta, net: VDMUNet(**net),  # net holds the gamma normalisation it was trained with
}


def recipe_network(recipe, img_channels: int) -> dict:
    """The re-implementation's U-Net of the preset's size, normalising gamma by the native range."""
    return dict(network="VDMUNet", net={**VDM_PRESETS[recipe.preset], "input_channels": img_channels, **recipe.network,
                                        "gamma_min": GAMMA["gamma_min"], "gamma_max": GAMMA["gamma_max"]})


# VDM (CIFAR-10): AdamW lr 2e-4, betas (0.9, 0.99), weight decay 0.01, 100 warm-up steps, dropout 0.1,
# Fourier features 2^6, 2^7 of the input.
TRAINING = dict(lr=2e-4, betas=(0.9, 0.99), weight_decay=0.01, warmup_steps=100,
                net=dict(dropout=0.1, fourier_exponents=(6, 7)))


def vdm_architecture(state: dict) -> dict:
    """VDMUNet hyper-parameters that the weight shapes fix."""
    try:
        conv_in, conv_out = state["conv_in.weight"], state["conv_out.2.weight"]
    except KeyError as error:
        raise ValueError(f"VDM state dict lacks {error.args[0]!r}") from None
    blocks = {int(match[1]) for key in state if (match := re.match(r"down_blocks\.(\d+)\.", key))}
    input_channels = conv_out.shape[0]
    return dict(embedding_dim=conv_in.shape[0], n_blocks=len(blocks), input_channels=input_channels,
                use_fourier_features=conv_in.shape[1] != input_channels,
                attention_everywhere=any(key.startswith("down_blocks.0.attention_block.") for key in state))


def import_vdm_checkpoint(path, *, checksum: str | None, gamma_min: float, gamma_max: float, network: dict | None):
    """A `model.pt` of the PyTorch VDM re-implementation (or a bare U-Net state dict), read with
    `torch.load(weights_only=True)`. The U-Net's size is read off the weight shapes; the heads and
    groups that shapes cannot show are the re-implementation's defaults unless `network` sets them."""
    if checksum is not None:
        verify_file(path, checksum)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # tensors and containers only
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} holds a {type(checkpoint).__name__}, not a VDM checkpoint dict")
    state = load_vdm_checkpoint_state(checkpoint)
    kwargs = {**vdm_architecture(state), **(network or {}), "gamma_min": float(gamma_min), "gamma_max": float(gamma_max)}
    return VDMUNet(**kwargs), state, dict(network="VDMUNet", net=kwargs, step=int(checkpoint.get("step", -1)))


IMPORTERS = {"vdm-checkpoint": import_vdm_checkpoint}

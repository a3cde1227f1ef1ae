"""The flow family: rectified flow / conditional flow matching on the linear path x_t = (1 - t) x + t eps
(Liu et al. 2023; Lipman et al. 2023), a network that predicts the velocity dx_t/dt = eps - x.

Seen on our clock, the path has alpha~ = 1 - t and sigma~ = t, so s = t / (1 - t) and t = sigmoid(gamma / 2)
in closed form (time matching, Eq. 10); its state is z~ = (1 - t) x for our x = x0 + s n (rescaling,
Eq. 11-12), and D = z~ - t v (the "velocity" parameterisation of `GaussianPathExpert`). It is trained on a
t interval short of both ends, where gamma is finite: [T_MIN, T_MAX] is gamma in [-13.8, 9.19], wider than
both EDM's and VDM's ranges. Its loss is the flow-matching mean squared error with t uniform (rectified
flow) or logit-normal (Esser et al. 2024, m = 0, s = 1), in the checkpoint's `time_distribution`.
"""
from __future__ import annotations

import functools

import torch

from ..networks.small_unet import SmallUNet
from ..noise import gamma_to_noise_level, noise_level_to_gamma
from .gaussian_path import GaussianPathExpert, GaussianSchedule
from .registry import get_family

SIGMA = get_family("flow").noise_range  # s = t / (1 - t) at t = 0.001 and t = 0.99
TIME_DISTRIBUTIONS = ("uniform", "logit-normal")
LABEL_SCALE = 1000.0  # the network is fed 1000 t, as rectified flow's code feeds 999 t
LOSS = "flow matching, mean squared velocity error per pixel"


def flow_time(gamma: torch.Tensor) -> torch.Tensor:
    """t with gamma~(t) = 2 log(t / (1 - t)) = gamma: t = sigmoid(gamma / 2), exact at both ends."""
    return torch.sigmoid(gamma / 2)


def linear_path(t_min: float, t_max: float) -> GaussianSchedule:
    """x_t = (1 - t) x + t eps on [t_min, t_max], with its derivatives and its inverse clock given."""
    return GaussianSchedule(alpha=lambda t: 1 - t, sigma=lambda t: t, t_min=t_min, t_max=t_max,
                            gamma_inverse=flow_time, alpha_derivative=lambda t: -torch.ones_like(t),
                            sigma_derivative=torch.ones_like)


class FlowExpert(GaussianPathExpert):
    """Wrap `net(z~, t) -> velocity` (z~ = (1 - t) x0 + t eps float32 [N,C,H,W], t float32 [N]) as an expert on
    [gamma_min, gamma_max]."""

    def __init__(self, net, gamma_min: float, gamma_max: float):
        super().__init__(net, linear_path(float(flow_time(torch.tensor(gamma_min, dtype=torch.float64))),
                                          float(flow_time(torch.tensor(gamma_max, dtype=torch.float64)))), "velocity")
        self.gamma_min, self.gamma_max = float(gamma_min), float(gamma_max)  # the checkpoint's, to the bit


def constants(gamma_min: float | None = None, gamma_max: float | None = None,
              time_distribution: str = "uniform") -> dict:
    """The checkpoint fields of a flow expert valid on [gamma_min, gamma_max] (default: the native t interval),
    which is also the t interval it is trained on."""
    if time_distribution not in TIME_DISTRIBUTIONS:
        raise ValueError(f"time_distribution must be one of {TIME_DISTRIBUTIONS}, got {time_distribution!r}")
    sigma_min = SIGMA["sigma_min"] if gamma_min is None else gamma_to_noise_level(gamma_min)
    sigma_max = SIGMA["sigma_max"] if gamma_max is None else gamma_to_noise_level(gamma_max)
    return dict(family="flow", time_distribution=time_distribution, t_min=sigma_min / (1 + sigma_min),
                t_max=sigma_max / (1 + sigma_max), gamma_min=noise_level_to_gamma(sigma_min),
                gamma_max=noise_level_to_gamma(sigma_max))


def expert(meta: dict, net: torch.nn.Module) -> FlowExpert:
    return FlowExpert(net, float(meta["gamma_min"]), float(meta["gamma_max"]))


def flow_loss(velocity_net, x0: torch.Tensor, generator: torch.Generator, t_min: float, t_max: float,
              time_distribution: str = "uniform") -> torch.Tensor:
    """Per image: mean over pixels of |v_hat(x_t, t) - (eps - x0)|^2 with x_t = (1 - t) x0 + t eps and t uniform on
    [t_min, t_max], or logit-normal (t = sigmoid(n), n ~ N(0, 1)) clipped to it."""
    n = x0.shape[0]
    if time_distribution == "uniform":
        t = t_min + (t_max - t_min) * torch.rand(n, generator=generator, dtype=torch.float64)
    else:
        t = torch.sigmoid(torch.randn(n, generator=generator, dtype=torch.float64)).clamp(t_min, t_max)
    eps = torch.randn(x0.shape, generator=generator).to(x0.device)
    t4 = t.to(x0).view(-1, 1, 1, 1)
    predicted = velocity_net((1 - t4) * x0 + t4 * eps, t.to(x0))
    return (predicted - (eps - x0)).square().flatten(1).mean(dim=1)


def loss(meta: dict):
    return functools.partial(flow_loss, t_min=float(meta["t_min"]), t_max=float(meta["t_max"]),
                             time_distribution=meta.get("time_distribution", "uniform"))


NETWORKS = {"SmallUNet": lambda meta, net: SmallUNet(**net, label_scale=LABEL_SCALE)}

# Flow matching on the digits: Adam lr 1e-3 with a short warm-up, as the demo's EDM expert; dropout 0.1.
TRAINING = dict(lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0, warmup_steps=250, net=dict(dropout=0.1))

IMPORTERS: dict = {}  # its checkpoints are ours (safetensors + JSON with t_min, t_max, time_distribution)


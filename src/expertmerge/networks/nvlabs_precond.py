"""NVlabs' VP and VE preconditionings around a DDPM++/NCSN++ `SongUNet` (Karras et al. 2022, Table 1;
NVlabs' `training/networks.py`), as `--precond vp` and `--precond ve` pickle them.

Constructor arguments, defaults and attribute names are NVlabs', so an `ema` network's recorded
`_init_kwargs` rebuild it (without `use_fp16`, which changes nothing in float32) and its state dict
loads unchanged (keys `model.map_noise...`, `model.enc...`). `SongUNet` is the only model_type
supported. Both compute in float32 throughout, as in training: the networks learned the float32
rounding of their c_noise. NVlabs' `EDMPrecond` is `experts.edm.EDMPrecond` around a `SongUNet`.

    net(x, sigma, class_labels=None, augment_labels=None) -> D(x; sigma)

with x [N, img_channels, R, R] and sigma a number or [N]. Without class labels a conditional
network (label_dim > 0) gets all-zero labels, as NVlabs' forward gives it.
"""
from __future__ import annotations

import torch
from torch import nn

from .ddpmpp import SongUNet, check_choice

MODEL_TYPES = ("SongUNet",)


class _NVlabsPrecond(nn.Module):
    """What VP and VE share: the interface arguments, the SongUNet `model`, and the float32 input handling."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int, model_type: str, model_kwargs: dict):
        super().__init__()
        check_choice("model_type", model_type, MODEL_TYPES)
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.model = SongUNet(img_resolution=img_resolution, in_channels=img_channels, out_channels=img_channels,
                              label_dim=label_dim, **model_kwargs)

    def _inputs(self, x: torch.Tensor, sigma, class_labels):
        """(x float32, sigma float32 [N, 1, 1, 1], class labels or None), checked."""
        name, shape = type(self).__name__, [self.img_channels, self.img_resolution, self.img_resolution]
        if x.ndim != 4 or list(x.shape[1:]) != shape:
            raise ValueError(f"{name} expects x of shape [N, {', '.join(map(str, shape))}], got {list(x.shape)}")
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        if sigma.numel() not in (1, x.shape[0]):
            raise ValueError(f"{name} expects sigma as a number or of shape [N] = [{x.shape[0]}], "
                             f"got {list(sigma.shape)}")
        sigma = sigma.reshape(-1, 1, 1, 1).expand(x.shape[0], 1, 1, 1)
        if self.label_dim:
            class_labels = (torch.zeros([1, self.label_dim], device=x.device) if class_labels is None
                            else class_labels.to(torch.float32).reshape(-1, self.label_dim))
        else:
            class_labels = None
        return x, sigma, class_labels

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)


class VPPrecond(_NVlabsPrecond):
    """The VP preconditioning (Table 1): D(x; sigma) = x - sigma F(x / sqrt(sigma^2 + 1); (M - 1) t(sigma)),
    with sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1) the VP schedule, trained on t in
    [epsilon_t, 1], and t(sigma) its inverse. `model_kwargs` go to the SongUNet (see DDPMPP_PRESETS)."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, beta_d: float = 19.9,
                 beta_min: float = 0.1, M: int = 1000, epsilon_t: float = 1e-5, model_type: str = "SongUNet",
                 **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, model_type, model_kwargs)
        self.beta_d, self.beta_min, self.M, self.epsilon_t = beta_d, beta_min, M, epsilon_t
        # In float64: NVlabs' float32 exp(.) - 1 gives sigma_min = 0.000977 instead of 0.001000.
        self.sigma_min = float(self.sigma(torch.tensor(epsilon_t, dtype=torch.float64)))
        self.sigma_max = float(self.sigma(torch.tensor(1.0, dtype=torch.float64)))

    def forward(self, x: torch.Tensor, sigma, class_labels=None, augment_labels=None) -> torch.Tensor:
        x, sigma, class_labels = self._inputs(x, sigma, class_labels)
        c_out, c_in, c_noise = -sigma, 1 / (sigma**2 + 1).sqrt(), (self.M - 1) * self.sigma_inv(sigma)
        F_x = self.model(c_in * x, c_noise.flatten(), class_labels=class_labels, augment_labels=augment_labels)
        return x + c_out * F_x.to(torch.float32)  # c_skip = 1

    def sigma(self, t):
        """VP noise level at time t: sqrt(exp(beta_d t^2/2 + beta_min t) - 1)."""
        t = torch.as_tensor(t)
        return ((0.5 * self.beta_d * t**2 + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma):
        """The t with sigma(t) = sigma: (sqrt(beta_min^2 + 2 beta_d log(1 + sigma^2)) - beta_min) / beta_d."""
        sigma = torch.as_tensor(sigma)
        return ((self.beta_min**2 + 2 * self.beta_d * (1 + sigma**2).log()).sqrt() - self.beta_min) / self.beta_d


class VEPrecond(_NVlabsPrecond):
    """The VE preconditioning (Table 1): D(x; sigma) = x + sigma F(x; log(sigma / 2)), trained on
    sigma in [sigma_min, sigma_max] (NVlabs' defaults 0.02 and 100, the NCSN++ setting)."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, sigma_min: float = 0.02,
                 sigma_max: float = 100, model_type: str = "SongUNet", **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, model_type, model_kwargs)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def forward(self, x: torch.Tensor, sigma, class_labels=None, augment_labels=None) -> torch.Tensor:
        x, sigma, class_labels = self._inputs(x, sigma, class_labels)
        c_noise = (0.5 * sigma).log()  # c_skip = c_in = 1, c_out = sigma
        F_x = self.model(x, c_noise.flatten(), class_labels=class_labels, augment_labels=augment_labels)
        return x + sigma * F_x.to(torch.float32)

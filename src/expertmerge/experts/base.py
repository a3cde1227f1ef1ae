"""The one interface every expert is wrapped into: a denoiser D(x; s) on a gamma range.

x is float32 [N, C, H, W] in VE coordinates, x = x0 + s*n, and s = exp(gamma/2) is the
noise level (a float or a tensor of shape [N]). D returns the estimate of E[x0 | x].
Anything with `gamma_min`, `gamma_max` and `denoise(x, s)` is an expert (duck typing);
subclassing `Expert` adds input checks and the derived noise-level range.
"""
from __future__ import annotations

import math

import torch

from ..noise import gamma_to_noise_level


def check_expert(expert, name: str = "expert"):
    """Raise a TypeError/ValueError naming what is missing or wrong with an expert."""
    for attribute in ("gamma_min", "gamma_max"):
        if not hasattr(expert, attribute):
            raise TypeError(
                f"{name} ({type(expert).__name__}) has no attribute {attribute!r}; an expert needs "
                "gamma_min, gamma_max (its valid range of negative log-SNR) and denoise(x, s)")
    if not callable(getattr(expert, "denoise", None)):
        raise TypeError(f"{name} ({type(expert).__name__}) has no method denoise(x, s)")
    gamma_min, gamma_max = float(expert.gamma_min), float(expert.gamma_max)
    if not (math.isfinite(gamma_min) and math.isfinite(gamma_max) and gamma_min < gamma_max):
        raise ValueError(f"{name} has an invalid gamma range [{gamma_min}, {gamma_max}]; "
                         "need finite gamma_min < gamma_max")
    return expert


def describe(expert) -> str:
    """An expert for messages: its name (a checkpoint's file name) or class, and its gamma range."""
    name = getattr(expert, "name", None) or type(expert).__name__
    return f"expert {name} (gamma in [{float(expert.gamma_min):.4g}, {float(expert.gamma_max):.4g}])"


def serving_expert(expert, gamma: float):
    """The single expert that serves noise level gamma: a merge's piece there (a boundary belongs to the
    higher-noise piece, as in merge.PiecewiseExpert), or the expert itself."""
    for lo, _, piece in reversed(getattr(expert, "pieces", [])):
        if gamma >= lo - 1e-9:
            return piece
    return expert


def raise_if_not_finite(values: torch.Tensor, indices, what: str, noise_level=None, expert=None) -> None:
    """Raise FloatingPointError naming the images (`indices`: seeds or data indices, one per row of `values`),
    the noise levels at which `values` is NaN or Inf and, given the `expert` that made them, the one serving
    the first such level (a merge's piece)."""
    bad = ~torch.isfinite(values.reshape(values.shape[0], -1)).all(dim=1)
    if not bool(bad.any()):
        return
    rows = torch.nonzero(bad).squeeze(1).tolist()
    where = ""
    if noise_level is not None:
        levels = torch.as_tensor(noise_level, dtype=torch.float64).cpu().expand(values.shape[0])[rows].tolist()
        where = " at noise level " + ", ".join(sorted({f"s={s:.6g} (gamma={2 * math.log(s):.4f})" for s in levels}))
        if expert is not None:
            what = f"{what} of the {describe(serving_expert(expert, 2 * math.log(levels[0])))}"
    shown = [indices[r] for r in rows]
    more = f" and {len(shown) - 10} more" if len(shown) > 10 else ""
    raise FloatingPointError(f"{what} is NaN or Inf for images {shown[:10]}{more}{where}")


def as_noise_level_batch(noise_level, batch: int, device=None) -> torch.Tensor:
    """Broadcast a float or [N] tensor of noise levels to a float64 tensor of shape [N]."""
    s = torch.as_tensor(noise_level, dtype=torch.float64, device=device)
    if s.ndim == 0:
        s = s.expand(batch)
    if s.shape != (batch,):
        raise ValueError(f"noise level must be a float or a tensor of shape [{batch}], got shape {tuple(s.shape)}")
    return s


def check_denoise_input(x, noise_level):
    """Validate (x, s) and return s as a float64 tensor of shape [N] on x's device."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.float32:
        raise TypeError(f"x must be float32 [N, C, H, W] in VE coordinates, got dtype {x.dtype}")
    if x.ndim != 4:
        raise ValueError(f"x must have shape [N, C, H, W], got shape {tuple(x.shape)}")
    s = as_noise_level_batch(noise_level, x.shape[0], device=x.device)
    if not bool(torch.all(s > 0)):
        raise ValueError(f"noise level s must be > 0 (s = exp(gamma/2)); got min {s.min().item():g}")
    return s


class Expert:
    """Base class: subclasses implement `_denoise(x, s)` with s float64 [N] on x.device."""

    gamma_min: float
    gamma_max: float

    def __init__(self, net, gamma_min: float, gamma_max: float):
        """An expert around a network `net`, valid on [gamma_min, gamma_max]."""
        self.net, self.gamma_min, self.gamma_max = net, float(gamma_min), float(gamma_max)

    def denoise(self, x: torch.Tensor, noise_level) -> torch.Tensor:
        s = check_denoise_input(x, noise_level)
        return self._denoise(x, s)

    def _denoise(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def noise_level_min(self) -> float:
        return gamma_to_noise_level(self.gamma_min)

    @property
    def noise_level_max(self) -> float:
        return gamma_to_noise_level(self.gamma_max)

    def __repr__(self):
        return f"{type(self).__name__}(gamma in [{self.gamma_min:.4g}, {self.gamma_max:.4g}])"


def broadcast_level(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-sample level [N] -> [N, 1, 1, 1] in like's dtype, for elementwise maths."""
    return s.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


class RescaledExpert(Expert):
    """An expert trained on data x' = a x + b, seen in our coordinates x (`images.COMMON_PIXELS`).

    With x' = a x + b the noise scales too, s' = a s, so D(x; s) = (D'(a x + b; a s) - b) / a, the exact
    change of variables; its gamma range is the inner one shifted by -2 log a. Densities computed with it
    are densities in our coordinates: nothing else needs accounting for.
    """

    def __init__(self, inner, a: float, b: float):
        if not (math.isfinite(a) and a > 0 and math.isfinite(b)):
            raise ValueError(f"a data convention x' = a x + b needs a finite a > 0 and a finite b, got a={a}, b={b}")
        shift = 2 * math.log(a)
        super().__init__(getattr(inner, "net", None), inner.gamma_min - shift, inner.gamma_max - shift)
        self.inner, self.a, self.b = inner, float(a), float(b)

    def _denoise(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return (self.inner.denoise(self.a * x + self.b, self.a * s) - self.b) / self.a


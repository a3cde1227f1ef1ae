"""Training the demo's two experts, each as its paper prescribes, sized for a small CPU.

* Quality expert: EDM's loss and preconditioning (Karras et al. 2022, Eq. 8 and Table 1):
  ln(sigma) ~ N(P_mean, P_std^2), weight lambda(sigma) = (sigma^2 + sigma_data^2)/(sigma sigma_data)^2;
  Adam (0.9, 0.999), learning-rate ramp-up, EMA with EDM's half-life ramp-up, no clipping.
* Likelihood expert: VDM's continuous-time diffusion loss (Kingma et al. 2021, Eq. 17) on the
  fixed linear schedule gamma in [-13.3, 5], eps-prediction, antithetic time sampling;
  AdamW (0.9, 0.99, weight decay 0.01 on weights only), 100 warm-up steps, no clipping
  (VDM's CIFAR-10 configuration). With a fixed schedule the prior and reconstruction terms
  of the ELBO do not depend on the network, so the diffusion term is what is optimised.

The papers' EMA constants (VDM 0.9999, EDM half-life 0.5 Mimg) are for runs of millions of
steps; here the EMA decay is capped at `ema_decay` and ramps up as EDM's does (half-life at
most `ema_rampup` of the steps so far). The EMA network is evaluated on the validation split
with fixed noise every `eval_every` steps and the best one is saved.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Callable

import torch

from .experts.checkpoint import build_network, check_family, expert_constants, save_expert
from .images import from_uint8
from .nets import count_parameters
from .noise import VDM_GAMMA_MAX, VDM_GAMMA_MIN, vp_alpha_sigma

log = logging.getLogger(__name__)

EDM_P_MEAN, EDM_P_STD = -1.2, 1.2  # EDM Table 1, training noise distribution


def edm_loss(precond_net, x0: torch.Tensor, generator: torch.Generator, p_mean: float = EDM_P_MEAN,
             p_std: float = EDM_P_STD, sigma_data: float | None = None) -> torch.Tensor:
    """EDM's loss per image (Eq. 8, Table 1), averaged over pixels: lambda(sigma) |D(x0 + n; sigma) - x0|^2.
    sigma_data defaults to the preconditioned net's (pass it for a wrapped net, e.g. under DDP)."""
    n = x0.shape[0]
    sigma = (torch.randn(n, generator=generator, dtype=torch.float64) * p_std + p_mean).exp().to(x0.device)
    sigma_data = precond_net.sigma_data if sigma_data is None else sigma_data
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    noise = torch.randn(x0.shape, generator=generator).to(x0.device) * sigma.to(x0.dtype).view(-1, 1, 1, 1)
    denoised = precond_net(x0 + noise, sigma)
    return weight.to(x0.dtype) * (denoised - x0).square().flatten(1).mean(dim=1)


def vdm_loss(eps_net, x0: torch.Tensor, generator: torch.Generator, gamma_min: float = VDM_GAMMA_MIN,
             gamma_max: float = VDM_GAMMA_MAX, antithetic: bool = True) -> torch.Tensor:
    """VDM's continuous-time diffusion loss per image in bits/dim (Eq. 17, linear gamma):
    1/2 gamma'(t) |eps - eps_hat(z_t; gamma_t)|^2 / (D ln 2), z_t = alpha_t x0 + sigma_t eps."""
    n, dims = x0.shape[0], x0[0].numel()
    if antithetic:  # VDM: t_i = (u0 + i/n) mod 1, a stratified draw of t for the batch
        t = (torch.rand((), generator=generator, dtype=torch.float64) + torch.arange(n, dtype=torch.float64) / n) % 1
    else:
        t = torch.rand(n, generator=generator, dtype=torch.float64)
    gamma = gamma_min + t * (gamma_max - gamma_min)
    alpha, sigma = (c.to(x0).view(-1, 1, 1, 1) for c in vp_alpha_sigma(gamma))
    eps = torch.randn(x0.shape, generator=generator).to(x0.device)
    eps_hat = eps_net(alpha * x0 + sigma * eps, gamma.to(x0))
    squared = (eps - eps_hat).square().flatten(1).sum(dim=1)
    return 0.5 * (gamma_max - gamma_min) * squared / (dims * math.log(2))


class EMA:
    """Exponential moving average of a network's parameters: p_ema <- beta p_ema + (1 - beta) p.

    beta = min(decay, 0.5^(1/(rampup * step))): EDM's ramp-up keeps the half-life at most
    `rampup` times the number of steps done so far (`rampup=None` uses `decay` throughout).
    """

    def __init__(self, net: torch.nn.Module, decay: float, rampup: float | None = 0.05):
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay!r}")
        self.net = copy.deepcopy(net).eval().requires_grad_(False)
        self.decay, self.rampup = float(decay), rampup

    def beta(self, step: int) -> float:
        """Decay used for the update after `step` earlier updates."""
        if self.rampup is None:
            return self.decay
        return min(self.decay, 0.5 ** (1 / max(self.rampup * step, 1e-8)))

    @torch.no_grad()
    def update(self, net: torch.nn.Module, step: int) -> float:
        beta = self.beta(step)
        for p_ema, p in zip(self.net.parameters(), net.parameters()):
            p_ema.copy_(p.detach().lerp(p_ema, beta))
        for b_ema, b in zip(self.net.buffers(), net.buffers()):
            b_ema.copy_(b)
        return beta


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    batch_size: int
    lr: float
    betas: tuple[float, float]
    weight_decay: float      # decoupled (AdamW), on weight matrices/kernels only
    warmup_steps: int        # linear learning-rate ramp from 0
    ema_decay: float
    ema_rampup: float | None
    grad_clip: float | None  # max global gradient norm, None for none
    eval_every: int
    val_repeats: int         # passes over the validation split per evaluation (fixed noise)
    log_every: int
    net: dict = field(default_factory=dict)  # SmallUNet hyper-parameters


_NET = dict(img_channels=1, patch=2, channels=(16, 32), blocks=1, emb_channels=128)
_STEPS = 5000  # ~2 minutes per expert with one torch thread (see benchmarks/bench_experts.py)
DEFAULTS = {
    # EDM (CIFAR-10 DDPM++): Adam lr 1e-3, lr ramp over the first 5% of training, dropout 0.13.
    "edm": TrainConfig(steps=_STEPS, batch_size=128, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0,
                       warmup_steps=_STEPS // 20, ema_decay=0.999, ema_rampup=0.05, grad_clip=None,
                       eval_every=200, val_repeats=8, log_every=200, net=dict(_NET, dropout=0.13)),
    # VDM (CIFAR-10): AdamW lr 2e-4, betas (0.9, 0.99), weight decay 0.01, 100 warm-up steps,
    # dropout 0.1, Fourier features 2^6, 2^7 of the input.
    "vdm": TrainConfig(steps=_STEPS, batch_size=128, lr=2e-4, betas=(0.9, 0.99), weight_decay=0.01,
                       warmup_steps=100, ema_decay=0.999, ema_rampup=0.05, grad_clip=None,
                       eval_every=200, val_repeats=8, log_every=200,
                       net=dict(_NET, dropout=0.1, fourier_exponents=(6, 7))),
}


def make_config(family: str, **overrides) -> TrainConfig:
    """The family's defaults with `overrides` applied; `net` overrides are merged into the default net."""
    base = DEFAULTS[check_family(family)]
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown training hyper-parameters {unknown}; known: {sorted(known)}")
    overrides = {key: value for key, value in overrides.items() if value is not None or key in ("grad_clip", "ema_rampup")}
    if "net" in overrides:
        overrides["net"] = {**base.net, **overrides["net"]}
    config = replace(base, **overrides)
    for name in ("steps", "batch_size", "eval_every", "val_repeats", "log_every"):
        if not (isinstance(getattr(config, name), int) and getattr(config, name) > 0):
            raise ValueError(f"{name} must be a positive integer, got {getattr(config, name)!r}")
    if not config.lr > 0:
        raise ValueError(f"lr must be > 0, got {config.lr!r}")
    return config


def family_loss(family: str, meta: dict) -> Callable:
    """loss(net, x0, generator) -> per-image loss for the module `build_network(meta)` makes."""
    if family == "edm":
        return edm_loss
    return lambda net, x0, generator: vdm_loss(net, x0, generator, meta["gamma_min"], meta["gamma_max"])


def _batches(n: int, batch_size: int, generator: torch.Generator):
    """Endless stream of index batches drawn from successive random permutations of range(n)."""
    order = torch.empty(0, dtype=torch.int64)
    while True:
        while len(order) < batch_size:
            order = torch.cat([order, torch.randperm(n, generator=generator)])
        yield order[:batch_size]
        order = order[batch_size:]


@torch.no_grad()
def validation_loss(loss_fn: Callable, net: torch.nn.Module, x_val: torch.Tensor, seed: int, repeats: int) -> float:
    """Mean loss over `repeats` passes of the validation split, with noise fixed by `seed`."""
    generator = torch.Generator().manual_seed(seed)
    return float(torch.stack([loss_fn(net, x_val, generator).mean() for _ in range(repeats)]).mean())


def make_optimizer(net: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with decoupled weight decay on weights only (0 for EDM, whose Adam has none)."""
    decay = [p for p in net.parameters() if p.ndim > 1]  # VDM masks biases and norm scales
    rest = [p for p in net.parameters() if p.ndim <= 1]
    groups = [dict(params=decay, weight_decay=config.weight_decay), dict(params=rest, weight_decay=0.0)]
    return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas), eps=1e-8)


def _log_progress(record: dict) -> None:
    log.info("step %d/%d  train %.4f  val %.4f (best %.4f at %d)  %.0fs elapsed, ETA %.0fs",
             record["step"], record["steps"], record["train_loss"], record["val_loss"], record["best_val_loss"],
             record["best_step"], record["elapsed_s"], record["eta_s"])


def train_expert(family: str, train_images, val_images, *, out_stem, seed: int = 0, gamma_min: float | None = None,
                 gamma_max: float | None = None, progress: Callable[[dict], None] | None = None, **overrides) -> dict:
    """Train one expert of `family` ("edm" or "vdm") on uint8 NHWC images and save its best EMA weights.

    `gamma_min`/`gamma_max` override the family's valid range (EDM [2 ln 0.002, 2 ln 80],
    VDM [-13.3, 5]); `overrides` are TrainConfig fields (steps, batch_size, lr, ema_decay,
    eval_every, log_every, net, ...). Deterministic for a given seed and thread count. Progress
    records (step, losses, elapsed, ETA) go to `progress`, or to the log. Returns the
    checkpoint's meta, with "path" added.
    """
    config = make_config(family, **overrides)
    x_train, x_val = from_uint8(train_images), from_uint8(val_images)
    meta = dict(expert_constants(family, gamma_min, gamma_max), net=dict(config.net, img_channels=x_train.shape[1]),
                image_shape=list(x_train.shape[1:]))
    loss_fn, report = family_loss(family, meta), progress or _log_progress
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # initial weights and dropout
        net = build_network(meta).train()
        ema = EMA(net, config.ema_decay, config.ema_rampup)
        optimizer = make_optimizer(net, config)
        generator = torch.Generator().manual_seed(seed)
        batches = _batches(len(x_train), config.batch_size, generator)
        val_seed = seed + 1_000_003
        best = dict(step=0, val_loss=validation_loss(loss_fn, ema.net, x_val, val_seed, config.val_repeats))
        best_state = copy.deepcopy(ema.net.state_dict())
        history, running, start = [dict(step=0, train_loss=None, val_loss=best["val_loss"])], [], time.perf_counter()
        for step in range(config.steps):
            for group in optimizer.param_groups:
                group["lr"] = config.lr * min(1.0, (step + 1) / max(config.warmup_steps, 1))
            loss = loss_fn(net, x_train[next(batches)], generator).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for p in net.parameters():  # as EDM: a non-finite gradient entry must not poison the weights
                torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
            optimizer.step()
            ema.update(net, step)
            running.append(loss.item())
            done = step + 1
            if done % config.eval_every == 0 or done == config.steps:
                val_loss = validation_loss(loss_fn, ema.net, x_val, val_seed, config.val_repeats)
                history.append(dict(step=done, train_loss=sum(running[-config.eval_every:]) / len(running[-config.eval_every:]),
                                    val_loss=val_loss))
                if val_loss < best["val_loss"]:
                    best, best_state = dict(step=done, val_loss=val_loss), copy.deepcopy(ema.net.state_dict())
            if done % config.log_every == 0 or done == config.steps:
                elapsed = time.perf_counter() - start
                report(dict(step=done, steps=config.steps, train_loss=sum(running[-config.log_every:]) / len(running[-config.log_every:]),
                            val_loss=history[-1]["val_loss"], best_val_loss=best["val_loss"], best_step=best["step"],
                            elapsed_s=elapsed, eta_s=elapsed / done * (config.steps - done)))
    wall = time.perf_counter() - start
    ema.net.load_state_dict(best_state)
    meta["training"] = dict(
        asdict(config), seed=seed, loss="EDM loss (Eq. 8), per pixel" if family == "edm" else "VDM diffusion loss, bits/dim",
        best_step=best["step"], best_val_loss=best["val_loss"], final_val_loss=history[-1]["val_loss"],
        wall_s=wall, threads=torch.get_num_threads(), parameters=count_parameters(net),
        n_train=len(x_train), n_val=len(x_val), history=history)
    path = save_expert(out_stem, ema.net, meta)
    return dict(meta, path=str(path))

"""The one training step every trainer here takes: learning-rate ramp, gradient guard, optimizer
step and EMA update. Used by `train_expert` (the demo's experts), `train_recipe` (the paper-scale
recipes, DDP and resume) and the FID digit classifier; and the checks that stop a training that
diverged before it saves anything.
"""
from __future__ import annotations

import copy
import math

import torch


class TrainingDiverged(ValueError):
    """A training that must not be saved: a non-finite loss, or no improvement on the untrained network."""


def check_finite_loss(loss: float, step: int, *, lr: float, what: str = "loss",
                      saved: str = "nothing was saved") -> None:
    """TrainingDiverged naming `step` (1-based) and the loss unless `loss` is finite: the weights it
    came from are garbage (non-finite gradients are zeroed, so they would otherwise be saved quietly)."""
    if not math.isfinite(loss):
        raise TrainingDiverged(f"training diverged: {what} {loss} at step {step} (lr {lr:g}); {saved}; "
                               "lower the learning rate or check the data")


class EMA:
    """Exponential moving average of a network's parameters: p_ema <- beta p_ema + (1 - beta) p.

    beta = min(decay, 0.5^(1/(rampup * step))): EDM's ramp-up keeps the half-life at most
    `rampup` times the number of steps done so far (`rampup=None` uses `decay` throughout). With
    `power`, ema-pytorch 0.1.4's warm-up instead (the VDM re-implementation's EMA): the first
    COPY_STEPS + 1 updates copy the weights, then beta = min(decay, 1 - (1 + k)^-power), k = step - COPY_STEPS.
    """

    COPY_STEPS = 100  # ema-pytorch's update_after_step

    def __init__(self, net: torch.nn.Module, decay: float, rampup: float | None = 0.05, power: float | None = None):
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay!r}")
        self.net = copy.deepcopy(net).eval().requires_grad_(False)
        self.decay, self.rampup, self.power = float(decay), rampup, power

    def beta(self, step: int) -> float:
        """Decay used for the update after `step` earlier updates."""
        if self.power is not None:
            k = step - self.COPY_STEPS
            return 0.0 if k <= 0 else min(self.decay, 1 - (1 + k) ** -self.power)
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


def make_optimizer(net: torch.nn.Module, config) -> torch.optim.Optimizer:
    """AdamW (config.lr, .betas) with decoupled weight decay (config.weight_decay) on weight matrices and
    kernels only, as VDM masks biases and norm scales, or on every parameter with config.weight_decay_on
    "all", as the VDM re-implementation's plain AdamW does; EDM's Adam is the case weight_decay = 0."""
    everything = getattr(config, "weight_decay_on", "weights") == "all"
    decay = [p for p in net.parameters() if p.ndim > 1 or everything]
    rest = [p for p in net.parameters() if not (p.ndim > 1 or everything)]
    groups = [dict(params=decay, weight_decay=config.weight_decay), dict(params=rest, weight_decay=0.0)]
    return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas), eps=1e-8)


def ramped_lr(lr: float, progress: float, ramp: float) -> float:
    """`lr` ramped up linearly over `ramp` units of progress (steps, or images as NVlabs counts), then constant;
    no ramp (ramp <= 0) is `lr` from the first step."""
    return lr if ramp <= 0 else lr * min(progress / ramp, 1.0)


def optimizer_step(net: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor, *,
                   lr: float | None = None, ema: EMA | None = None, step: int = 0,
                   grad_clip: float | None = None) -> None:
    """Backpropagate `loss` into `net` and update it: the learning rate set to `lr` (None keeps the
    optimizer's, e.g. a scheduler's), non-finite gradient entries replaced, the global gradient norm
    clipped to `grad_clip` if given, one optimizer step, then `ema` updated after `step` earlier steps."""
    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # under DDP this also averages the gradients over ranks
    for p in net.parameters():  # as EDM: a non-finite gradient entry must not poison the weights
        if p.grad is not None:
            torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    optimizer.step()
    if ema is not None:
        ema.update(net, step)

"""`expertmerge train-expert`: train a small expert in one process, sized for a CPU (the demo's).

The family's module supplies the network, its loss and the hyper-parameters its paper prescribes
(`TRAINING`: e.g. EDM's Adam with a learning-rate ramp, VDM's AdamW with weight decay on weights
only); `DEFAULTS` here holds the rest. The papers' EMA constants (VDM 0.9999, EDM half-life
0.5 Mimg) are for runs of millions of steps; here the EMA decay is capped at `ema_decay` and ramps
up as EDM's does (half-life at most `ema_rampup` of the steps so far). The EMA network is
evaluated on the validation split with fixed noise every `eval_every` steps and the best one is
saved. Nothing is saved when a training or validation loss is not finite, or when no evaluation
improved on the untrained network's (step 0): its "best" would be the untrained weights.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Callable

import torch

from .experts.checkpoint import build_network, expert_constants, family_module, save_expert
from .images import from_uint8
from .networks import count_parameters
from .optimization import EMA, TrainingDiverged, check_finite_loss, make_optimizer, optimizer_step, ramped_lr

log = logging.getLogger(__name__)


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


# ~2 minutes per expert with one torch thread (see benchmarks/bench_experts.py); a family's TRAINING
# sets lr, betas, weight_decay, warmup_steps and its net's dropout and input features.
DEFAULTS = dict(steps=5000, batch_size=128, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0, warmup_steps=0,
                ema_decay=0.999, ema_rampup=0.05, grad_clip=None, eval_every=200, val_repeats=8, log_every=200,
                net=dict(img_channels=1, patch=2, channels=(16, 32), blocks=1, emb_channels=128))


def family_defaults(family: str) -> TrainConfig:
    """DEFAULTS with the family's TRAINING applied (its `net` merged into the default net)."""
    training = family_module(family).TRAINING
    return TrainConfig(**{**DEFAULTS, **training, "net": {**DEFAULTS["net"], **training.get("net", {})}})


def make_config(family: str, **overrides) -> TrainConfig:
    """The family's defaults with `overrides` applied; `net` overrides are merged into the default net."""
    base = family_defaults(family)
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


def _checked_validation(loss_fn: Callable, net: torch.nn.Module, x_val: torch.Tensor, seed: int, config: TrainConfig,
                        step: int) -> float:
    """`validation_loss`, or TrainingDiverged if it is not finite."""
    loss = validation_loss(loss_fn, net, x_val, seed, config.val_repeats)
    check_finite_loss(loss, step, lr=config.lr, what="validation loss")
    return loss


def _refuse_unimproved(best: dict, history: list, config: TrainConfig) -> None:
    """TrainingDiverged if the best EMA network is the untrained one (step 0): that is no expert."""
    if best["step"] == 0:
        raise TrainingDiverged(
            f"training never improved on the untrained network's validation loss {history[0]['val_loss']:.6g} "
            f"(last {history[-1]['val_loss']:.6g} at step {history[-1]['step']}, lr {config.lr:g}); nothing was saved; "
            "lower the learning rate if the loss grew, else train longer")


def _log_progress(record: dict) -> None:
    log.info("step %d/%d  train %.4f  val %.4f (best %.4f at %d)  %.0fs elapsed, ETA %.0fs",
             record["step"], record["steps"], record["train_loss"], record["val_loss"], record["best_val_loss"],
             record["best_step"], record["elapsed_s"], record["eta_s"])


def _mean_of_last(values: list, count: int) -> float:
    return sum(values[-count:]) / len(values[-count:])


def train_expert(family: str, train_images, val_images, *, out_stem, seed: int = 0, gamma_min: float | None = None,
                 gamma_max: float | None = None, progress: Callable[[dict], None] | None = None, **overrides) -> dict:
    """Train one expert of `family` (a name in the family registry) on uint8 NHWC images and save its
    best EMA weights.

    `gamma_min`/`gamma_max` override the family's valid range (its native range by default);
    `overrides` are TrainConfig fields (steps, batch_size, lr, ema_decay, eval_every, log_every,
    net, ...). Deterministic for a given seed and thread count. Progress records (step, losses,
    elapsed, ETA) go to `progress`, or to the log. Returns the checkpoint's meta, with "path" added.
    """
    config = make_config(family, **overrides)
    x_train, x_val = from_uint8(train_images), from_uint8(val_images)
    meta = dict(expert_constants(family, gamma_min, gamma_max), net=dict(config.net, img_channels=x_train.shape[1]),
                image_shape=list(x_train.shape[1:]))
    loss_fn, report = family_module(family).loss(meta), progress or _log_progress
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # initial weights and dropout
        net = build_network(meta).train()
        ema = EMA(net, config.ema_decay, config.ema_rampup)
        optimizer = make_optimizer(net, config)
        generator = torch.Generator().manual_seed(seed)
        batches = _batches(len(x_train), config.batch_size, generator)
        val_seed = seed + 1_000_003
        best = dict(step=0, val_loss=_checked_validation(loss_fn, ema.net, x_val, val_seed, config, 0))
        best_state = copy.deepcopy(ema.net.state_dict())
        history, running, start = [dict(step=0, train_loss=None, val_loss=best["val_loss"])], [], time.perf_counter()
        for step in range(config.steps):
            loss = loss_fn(net, x_train[next(batches)], generator).mean()
            running.append(loss.item())
            check_finite_loss(running[-1], step + 1, lr=config.lr)
            optimizer_step(net, optimizer, loss, lr=ramped_lr(config.lr, step + 1, config.warmup_steps), ema=ema,
                           step=step, grad_clip=config.grad_clip)
            done = step + 1
            if done % config.eval_every == 0 or done == config.steps:
                val_loss = _checked_validation(loss_fn, ema.net, x_val, val_seed, config, done)
                history.append(dict(step=done, train_loss=_mean_of_last(running, config.eval_every), val_loss=val_loss))
                if val_loss < best["val_loss"]:
                    best, best_state = dict(step=done, val_loss=val_loss), copy.deepcopy(ema.net.state_dict())
            if done % config.log_every == 0 or done == config.steps:
                elapsed = time.perf_counter() - start
                report(dict(step=done, steps=config.steps, train_loss=_mean_of_last(running, config.log_every),
                            val_loss=history[-1]["val_loss"], best_val_loss=best["val_loss"], best_step=best["step"],
                            elapsed_s=elapsed, eta_s=elapsed / done * (config.steps - done)))
    wall = time.perf_counter() - start
    _refuse_unimproved(best, history, config)
    ema.net.load_state_dict(best_state)
    meta["training"] = dict(
        asdict(config), seed=seed, loss=family_module(family).LOSS, best_step=best["step"], best_val_loss=best["val_loss"],
        final_val_loss=history[-1]["val_loss"], wall_s=wall, threads=torch.get_num_threads(),
        parameters=count_parameters(net), n_train=len(x_train), n_val=len(x_val), history=history)
    path = save_expert(out_stem, ema.net, meta)
    return dict(meta, path=str(path))

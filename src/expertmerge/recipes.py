"""The paper-scale training recipes (App. A of the merging paper), as plain data.

Kept free of torch so that planning the workflow (config checks) does not import it;
`expertmerge.train_recipe` runs them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Recipe:
    family: str                    # a family of expertmerge.experts.registry: loss, preconditioning, networks
    preset: str                    # the family's network preset (DDPMPP_PRESETS / VDM_PRESETS)
    batch_size: int                # global batch, summed over GPUs
    total_images: int              # training length; steps = ceil(total_images / batch_size)
    lr: float
    betas: tuple[float, float]
    weight_decay: float            # decoupled, on weight matrices/kernels only
    lr_rampup_images: int          # linear ramp of the lr from 0, in images seen before the step
    ema_decay: float | None        # constant EMA decay (VDM), or None
    ema_halflife_images: int | None  # EMA half-life in images (EDM), or None
    ema_rampup: float | None       # half-life at most this ratio of the images so far (EDM), or None
    network: dict = field(default_factory=dict)  # overrides of the preset's network hyper-parameters
    constants: dict = field(default_factory=dict)  # family constants other than its defaults (EDM: sigma_data)
    pixels: dict | None = None     # the data convention it trains on ({scale, offset}: x = scale k + offset); None: ours
    ema_power: float | None = None  # ema-pytorch's warm-up power (the VDM re-implementation's EMA), or None
    grad_clip: float | None = None  # max global gradient norm, or None
    weight_decay_on: str = "weights"  # "weights" (matrices and kernels) or "all" parameters

    def steps(self, batch_size: int | None = None) -> int:
        return math.ceil(self.total_images / (batch_size or self.batch_size))


# The VDM re-implementation's Trainer (addtt/variational-diffusion-models train.py), which the paper trained:
# AdamW(lr 2e-4, betas (0.9, 0.99), weight decay 0.01 on all parameters, eps 1e-8), no lr warm-up, gradient
# norm clipped to 1, EMA by ema-pytorch 0.1.4 (beta 0.9999, power 3/4, update every step).
_VDM = dict(family="vdm", lr=2e-4, betas=(0.9, 0.99), weight_decay=0.01, weight_decay_on="all", lr_rampup_images=0,
            grad_clip=1.0, ema_decay=0.9999, ema_power=0.75, ema_halflife_images=None, ema_rampup=None)
RECIPES = {
    "vdm-cifar10": Recipe(preset="cifar10", batch_size=128, total_images=128 * 10_000_000, **_VDM),
    "vdm-imagenet32": Recipe(preset="imagenet32", batch_size=512, total_images=512 * 2_000_000, **_VDM),
    # NVlabs' ddpmpp defaults: channel_mult [2, 2, 2], dropout 0.13; no augment pipe (see above).
    "edm-imagenet32": Recipe(family="edm", preset="cifar10", batch_size=1024, total_images=1_000_000_000,
                             lr=10e-4, betas=(0.9, 0.999), weight_decay=0.0, lr_rampup_images=10_000_000,
                             ema_decay=None, ema_halflife_images=500_000, ema_rampup=0.05,
                             network=dict(augment_dim=0, dropout=0.13),
                             pixels={"scale": 1 / 127.5, "offset": -1.0}),  # NVlabs' training_loop: k/127.5 - 1
}


def get_recipe(recipe) -> Recipe:
    if isinstance(recipe, Recipe):
        return recipe
    if recipe not in RECIPES:
        raise ValueError(f"unknown training recipe {recipe!r}; known recipes: {', '.join(sorted(RECIPES))}")
    return RECIPES[recipe]



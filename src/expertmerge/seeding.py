"""Per-image randomness: image i draws all its noise from its own generator seeded with seeds[i].

Draws are made on the CPU, so results do not depend on the device, the batch size or the shard.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch


def per_image_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(int(seed)) for seed in seeds]


def per_image_draw(generators, draw: Callable[[torch.Generator], torch.Tensor], device) -> torch.Tensor:
    """Stack one draw per image, each from its own generator, and move it to `device`."""
    return torch.stack([draw(g) for g in generators]).to(device)


def run_seeds(run: int, image_seeds: Sequence[int]) -> list[int]:
    """Seeds of the images in run `run`: each from the pair (run, image seed) via numpy's SeedSequence,
    so runs are independent and each image's draws still depend on its own seed only."""
    return [int(np.random.SeedSequence([int(run), int(seed)]).generate_state(1, np.uint64)[0]) for seed in image_seeds]

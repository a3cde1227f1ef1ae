"""Per-image randomness: image i draws all its noise from its own generator seeded with seeds[i].

Draws are made on the CPU, so results do not depend on the device, the batch size or the shard.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch


def per_image_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(int(seed)) for seed in seeds]


def per_image_draw(generators, draw: Callable[[torch.Generator], torch.Tensor], device) -> torch.Tensor:
    """Stack one draw per image, each from its own generator, and move it to `device`."""
    return torch.stack([draw(g) for g in generators]).to(device)

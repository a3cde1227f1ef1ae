"""8-bit images <-> data scale.

Convention (used everywhere): level k in 0..255 maps to the centre of its bin,
x = (2k + 1)/256 - 1, so bins have width 2/256 and the truncated-normal dequantisation
bound tau = alpha0/(256 sigma0) is exactly half a bin. Images are uint8 NHWC; data are
float32 NCHW.
"""
from __future__ import annotations

import torch


def check_images(images) -> torch.Tensor:
    """Validate uint8 [N, H, W, C] images (C in 1, 3) and return them as a tensor."""
    if not isinstance(images, torch.Tensor):
        try:
            images = torch.as_tensor(images)
        except Exception as error:
            raise TypeError(f"images must be a uint8 array of shape [N, H, W, C], got {type(images).__name__}") from error
    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 [N, H, W, C] (8-bit levels 0..255), got dtype {images.dtype}")
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(f"images must have shape [N, H, W, C] with N >= 1 and C in (1, 3), got {tuple(images.shape)}")
    return images


def from_uint8(images) -> torch.Tensor:
    """uint8 [N, H, W, C] -> float32 [N, C, H, W], x = (2k + 1)/256 - 1."""
    images = check_images(images)
    return ((2 * images.permute(0, 3, 1, 2).float() + 1) / 256 - 1).contiguous()


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [N, C, H, W] -> uint8 [N, H, W, C]: the bin that contains x, clipped to 0..255."""
    levels = torch.floor((x.detach().float() + 1) * 128).clamp(0, 255)
    return levels.to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu()

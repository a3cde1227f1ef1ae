"""8-bit images <-> data scale.

Convention (the common coordinates of every merged model here): level k in 0..255 maps to the
centre of its bin, x = (2k + 1)/256 - 1, as VDM and its PyTorch re-implementation do, so bins have
width 2/256 and the truncated-normal dequantisation bound tau = alpha0/(256 sigma0) is exactly
half a bin. An expert trained on another affine map of the levels (NVlabs' EDM: x' = k/127.5 - 1)
records it as its `PixelScale` and is seen through the exact change of variables
(`experts.base.RescaledExpert`). Images are uint8 NHWC; data are float32 NCHW.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PixelScale:
    """An expert's data convention: 8-bit level k -> x = scale * k + offset."""
    scale: float
    offset: float

    def record(self) -> dict:
        return {"scale": self.scale, "offset": self.offset}

    @classmethod
    def from_record(cls, record: dict) -> "PixelScale":
        try:
            scale, offset = float(record["scale"]), float(record["offset"])
        except (TypeError, KeyError, ValueError) as error:
            raise ValueError(f"a pixel convention needs numbers 'scale' and 'offset', got {record!r}") from error
        if not scale > 0:
            raise ValueError(f"a pixel convention's scale must be > 0, got {scale}")
        return cls(scale, offset)

    def from_common(self) -> tuple[float, float]:
        """(a, b) with x_this = a * x_common + b."""
        a = self.scale / COMMON_PIXELS.scale
        return a, self.offset - a * COMMON_PIXELS.offset


COMMON_PIXELS = PixelScale(2 / 256, 1 / 256 - 1)  # VDM's, and ours: bin centres
EDM_PIXELS = PixelScale(1 / 127.5, -1.0)          # NVlabs' training_loop.py: images / 127.5 - 1


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


def from_uint8(images, pixels: PixelScale | None = None) -> torch.Tensor:
    """uint8 [N, H, W, C] -> float32 [N, C, H, W], x = (2k + 1)/256 - 1, or in `pixels`' convention
    (computed in float64, rounded once)."""
    images = check_images(images).permute(0, 3, 1, 2)
    if pixels is None or pixels == COMMON_PIXELS:
        return ((2 * images.float() + 1) / 256 - 1).contiguous()
    return (pixels.scale * images.double() + pixels.offset).float().contiguous()


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [N, C, H, W] -> uint8 [N, H, W, C]: the bin that contains x, clipped to 0..255."""
    levels = torch.floor((x.detach().float() + 1) * 128).clamp(0, 255)
    return levels.to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu()

"""A small U-Net for 8x8 images (the demo's experts), in the style of NVlabs' networks.py (SongUNet, DDPM++).

`SmallUNet(x, noise_labels)` maps an image batch and one noise label per image to an image
batch. It knows nothing about noise schedules: the caller decides what the label is
(EDM feeds c_noise = ln(sigma)/4; VDM feeds gamma, normalised by `label_offset` and
`label_scale` to (gamma - gamma_min)/(gamma_max - gamma_min) * 1000 as VDM does).
Only per-image layers (GroupNorm, no BatchNorm), so an image's output does not depend on
the rest of its batch. Its GroupNorm and noise embedding are DDPM++'s (`ddpmpp`).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .ddpmpp import GroupNorm, PositionalEmbedding


def group_norm(channels: int, max_groups: int = 32, min_channels_per_group: int = 4) -> GroupNorm:
    """DDPM++'s GroupNorm (eps 1e-6) with NVlabs' rule, up to 32 groups and at least 4 channels per
    group, made to fit any channel count: at least one group, and fewer until they divide `channels`
    (NVlabs' min(32, C // 4) alone fails where it does not divide C; where it does, the two agree)."""
    groups = max(1, min(max_groups, channels // min_channels_per_group))
    while channels % groups:
        groups -= 1
    return GroupNorm(channels, num_groups=groups, min_channels_per_group=1, eps=1e-6)  # exactly `groups`


def fourier_features(x: torch.Tensor, exponents: tuple[int, ...]) -> torch.Tensor:
    """VDM's input features sin/cos(2^n * 2 pi * x) per channel, for fine-scale detail."""
    features = [x]
    for n in exponents:
        angle = (2.0**n * 2 * math.pi) * x
        features += [angle.sin(), angle.cos()]
    return torch.cat(features, dim=1)


class UNetBlock(nn.Module):
    """Residual block: GN-SiLU-conv, scale/shift by the embedding, GN-SiLU-dropout-conv, skip."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm0 = group_norm(in_channels)
        self.conv0 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.affine = nn.Linear(emb_channels, 2 * out_channels)
        self.norm1 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv1.weight)  # the block starts as its skip path (NVlabs init_zero)
        nn.init.zeros_(self.conv1.bias)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        scale, shift = self.affine(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))  # adaptive scale, as DDPM++
        h = self.conv1(self.dropout(h))
        return (h + self.skip(x)) * math.sqrt(0.5)


class SmallUNet(nn.Module):
    """Two-level U-Net: the image is folded `patch` x `patch` into channels (pixel unshuffle),
    processed by `blocks` residual blocks at that size (`channels[0]`) and at half that size
    (`channels[1]`), with a middle block and a mirrored decoder that takes one skip connection
    per encoder block. For 8x8 digits with patch 2 the two levels are 4x4 and 2x2; folding
    keeps the network fast on a CPU, where 3x3 convolutions over 8x8 maps with few channels
    are slow. The output layer starts at zero.
    """

    def __init__(self, img_channels: int = 1, patch: int = 2, channels: tuple[int, int] = (16, 32),
                 blocks: int = 1, emb_channels: int = 128, dropout: float = 0.0, label_offset: float = 0.0,
                 label_scale: float = 1.0, fourier_exponents: tuple[int, ...] = ()):
        super().__init__()
        c0, c1 = (int(c) for c in channels)
        self.patch = int(patch)
        self.label_offset, self.label_scale = float(label_offset), float(label_scale)
        self.fourier_exponents = tuple(int(n) for n in fourier_exponents)
        in_channels = img_channels * (1 + 2 * len(self.fourier_exponents)) * self.patch**2
        self.embed = PositionalEmbedding(emb_channels)
        self.map0 = nn.Linear(emb_channels, emb_channels)
        self.map1 = nn.Linear(emb_channels, emb_channels)
        self.conv_in = nn.Conv2d(in_channels, c0, 3, padding=1)
        self.enc_high = nn.ModuleList(UNetBlock(c0, c0, emb_channels, dropout) for _ in range(blocks))
        self.enc_low = nn.ModuleList(UNetBlock(c1 if k else c0, c1, emb_channels, dropout) for k in range(blocks))
        self.mid = UNetBlock(c1, c1, emb_channels, dropout)
        self.dec_low = nn.ModuleList(UNetBlock(2 * c1, c1, emb_channels, dropout) for _ in range(blocks))
        self.dec_high = nn.ModuleList(UNetBlock((c0 if k else c1) + c0, c0, emb_channels, dropout)
                                      for k in range(blocks))
        self.norm_out = group_norm(c0)
        self.conv_out = nn.Conv2d(c0, img_channels * self.patch**2, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def embedding(self, noise_labels: torch.Tensor, batch: int) -> torch.Tensor:
        labels = torch.as_tensor(noise_labels, dtype=torch.float32).reshape(-1).expand(batch)
        sin, cos = self.embed((labels - self.label_offset) * self.label_scale).chunk(2, dim=1)
        emb = torch.cat([cos, sin], dim=1)  # SmallUNet's order (DDPM++ feeds [sin | cos])
        return F.silu(self.map1(F.silu(self.map0(emb))))

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % (2 * self.patch) or x.shape[-2] % (2 * self.patch):
            raise ValueError(f"image size must be divisible by {2 * self.patch}, got {tuple(x.shape[-2:])}")
        emb = self.embedding(noise_labels.to(x.device), x.shape[0])
        h = self.conv_in(F.pixel_unshuffle(fourier_features(x, self.fourier_exponents), self.patch))
        high, low = [], []
        for block in self.enc_high:
            h = block(h, emb)
            high.append(h)
        h = F.avg_pool2d(h, 2)
        for block in self.enc_low:
            h = block(h, emb)
            low.append(h)
        h = self.mid(h, emb)
        for block in self.dec_low:
            h = block(torch.cat([h, low.pop()], dim=1), emb)
        h = F.interpolate(h, scale_factor=2, mode="nearest")
        for block in self.dec_high:
            h = block(torch.cat([h, high.pop()], dim=1), emb)
        return F.pixel_shuffle(self.conv_out(F.silu(self.norm_out(h))), self.patch)


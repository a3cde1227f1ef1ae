"""The paper-scale VDM network: the U-Net of the PyTorch VDM re-implementation the paper trained
(github.com/addtt/variational-diffusion-models, `vdm_unet.py`, after Kingma et al. 2021, App. B).

`VDMUNet(z, gamma)` maps a VP state z = alpha*x0 + sigma*eps [N, C, H, W] and gamma = -log SNR
[N] to eps_hat. It has no downsampling: `n_blocks` residual blocks at full resolution, a
middle block with self-attention, and `n_blocks + 1` decoder blocks that each take one skip
connection. Its inputs are z and Fourier features of z; it is conditioned on gamma mapped to
[0, 1] by (gamma_min, gamma_max) and embedded as a diffusion time step in [0, 1000]; its
output is eps_hat = z + U-Net(z), an epsilon prediction with a skip.

Every module and parameter is named as in that implementation, so its state dicts load
unchanged; `load_vdm_checkpoint_state` takes the U-Net's weights out of its checkpoints.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

# Architectures of the paper's VDM experts (App. A): CIFAR-10 with 128 channels, ImageNet32 with 256.
VDM_PRESETS = {
    "cifar10": dict(embedding_dim=128),
    "imagenet32": dict(embedding_dim=256),
}
ARCHITECTURE_FIELDS = (
    "embedding_dim", "n_blocks", "n_attention_heads", "dropout_prob", "norm_groups",
    "input_channels", "use_fourier_features", "attention_everywhere", "gamma_min", "gamma_max",
)


class VDMUNet(nn.Module):
    """`net(z, gamma) -> eps_hat`; keyword names and defaults are the re-implementation's training config."""

    def __init__(
        self,
        embedding_dim: int = 128,
        n_blocks: int = 32,
        n_attention_heads: int = 1,
        dropout_prob: float = 0.1,
        norm_groups: int = 32,
        input_channels: int = 3,
        use_fourier_features: bool = True,
        attention_everywhere: bool = False,
        gamma_min: float = -13.3,  # VDM's fixed linear schedule (the vdm family's native range)
        gamma_max: float = 5.0,
    ):
        super().__init__()
        if not gamma_min < gamma_max:
            raise ValueError(f"VDMUNet needs gamma_min < gamma_max, got {gamma_min} and {gamma_max}")
        if embedding_dim % 2 or embedding_dim % norm_groups or embedding_dim % n_attention_heads:
            raise ValueError(
                f"VDMUNet embedding_dim={embedding_dim} must be even and divisible by "
                f"norm_groups={norm_groups} and n_attention_heads={n_attention_heads}")
        self.embedding_dim, self.input_channels = embedding_dim, input_channels
        self.gamma_min, self.gamma_max = float(gamma_min), float(gamma_max)
        self.use_fourier_features = use_fourier_features
        cond_dim = 4 * embedding_dim

        def resnet(ch_in):
            return ResnetBlock(ch_in, embedding_dim, cond_dim, dropout_prob, norm_groups)

        def attention():
            return AttentionBlock(embedding_dim, n_attention_heads, norm_groups)

        def level_block(ch_in):
            return UpDownBlock(resnet(ch_in), attention() if attention_everywhere else None)

        if use_fourier_features:
            self.fourier_features = FourierFeatures()
        self.embed_conditioning = nn.Sequential(
            nn.Linear(embedding_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim), nn.SiLU())
        self.conv_in = nn.Conv2d(input_channels * self.feature_multiplier, embedding_dim, 3, padding=1)
        self.down_blocks = nn.ModuleList(level_block(embedding_dim) for _ in range(n_blocks))
        self.mid_resnet_block_1 = resnet(embedding_dim)
        self.mid_attn_block = attention()
        self.mid_resnet_block_2 = resnet(embedding_dim)
        self.up_blocks = nn.ModuleList(level_block(2 * embedding_dim) for _ in range(n_blocks + 1))
        self.conv_out = nn.Sequential(
            nn.GroupNorm(norm_groups, embedding_dim), nn.SiLU(),
            zero_init(nn.Conv2d(embedding_dim, input_channels, 3, padding=1)))

    @classmethod
    def from_config(cls, config: dict) -> "VDMUNet":
        """Build from the re-implementation's `config.yaml` (training fields are ignored)."""
        missing = [name for name in ARCHITECTURE_FIELDS if name not in config]
        if missing:
            raise ValueError(f"VDM config lacks {missing}; it needs all of {list(ARCHITECTURE_FIELDS)}")
        return cls(**{name: config[name] for name in ARCHITECTURE_FIELDS})

    @property
    def feature_multiplier(self) -> int:
        """Input channels per image channel: z itself plus its sin and cos features."""
        return 1 + self.fourier_features.num_features if self.use_fourier_features else 1

    def forward(self, z: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        self._check_inputs(z, gamma)
        t = (gamma.to(torch.float32) - self.gamma_min) / (self.gamma_max - self.gamma_min)  # ~[0, 1]
        cond = self.embed_conditioning(timestep_embedding(1000 * t, self.embedding_dim))
        h = self.conv_in(self.fourier_features(z) if self.use_fourier_features else z)
        skips = []
        for block in self.down_blocks:
            skips.append(h)
            h = block(h, cond)
        skips.append(h)
        h = self.mid_resnet_block_1(h, cond)
        h = self.mid_attn_block(h)
        h = self.mid_resnet_block_2(h, cond)
        for block in self.up_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), cond)
        return z + self.conv_out(h)  # epsilon prediction with a skip from the input

    def _check_inputs(self, z: torch.Tensor, gamma: torch.Tensor) -> None:
        if z.ndim != 4 or z.shape[1] != self.input_channels:
            raise ValueError(f"VDMUNet expects z of shape [N, {self.input_channels}, H, W], got {list(z.shape)}")
        if gamma.shape != (z.shape[0],):
            raise ValueError(f"VDMUNet expects gamma of shape [N] = [{z.shape[0]}], got {list(gamma.shape)}")


class ResnetBlock(nn.Module):
    """GN-SiLU-conv, plus a projection of the conditioning, GN-SiLU-(dropout)-conv, residual."""

    def __init__(self, ch_in: int, ch_out: int, condition_dim: int, dropout_prob: float, norm_groups: int):
        super().__init__()
        self.net1 = nn.Sequential(nn.GroupNorm(norm_groups, ch_in), nn.SiLU(), nn.Conv2d(ch_in, ch_out, 3, padding=1))
        self.cond_proj = zero_init(nn.Linear(condition_dim, ch_out, bias=False))
        dropout = [nn.Dropout(dropout_prob)] if dropout_prob > 0 else []  # shifts the conv's index, as upstream
        self.net2 = nn.Sequential(
            nn.GroupNorm(norm_groups, ch_out), nn.SiLU(), *dropout,
            zero_init(nn.Conv2d(ch_out, ch_out, 3, padding=1)))
        if ch_in != ch_out:
            self.skip_conv = nn.Conv2d(ch_in, ch_out, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.net2(self.net1(x) + self.cond_proj(cond)[:, :, None, None])
        return (self.skip_conv(x) if hasattr(self, "skip_conv") else x) + h


class AttentionBlock(nn.Module):
    """Residual multi-head self-attention over pixels: GN, 1x1 conv to q|k|v, attention, 1x1 conv."""

    def __init__(self, n_channels: int, n_heads: int, norm_groups: int):
        super().__init__()
        self.n_heads = n_heads
        # Same indices as upstream, whose attention sits at index 2 and has no parameters.
        self.layers = nn.Sequential(
            nn.GroupNorm(norm_groups, n_channels), nn.Conv2d(n_channels, 3 * n_channels, 1),
            nn.Identity(), zero_init(nn.Conv2d(n_channels, n_channels, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm, to_qkv, _, proj_out = self.layers
        n, c, height, width = x.shape
        # q, k, v are consecutive channel thirds; heads are consecutive channel groups within each.
        q, k, v = to_qkv(norm(x)).reshape(n, 3, self.n_heads, c // self.n_heads, height * width).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + proj_out(out.transpose(-1, -2).reshape(n, c, height, width))


class UpDownBlock(nn.Module):
    """One U-Net level: a residual block, optionally followed by self-attention."""

    def __init__(self, resnet_block: ResnetBlock, attention_block: AttentionBlock | None = None):
        super().__init__()
        self.resnet_block = resnet_block
        self.attention_block = attention_block

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x = self.resnet_block(x, cond)
        return x if self.attention_block is None else self.attention_block(x)


class FourierFeatures(nn.Module):
    """[z, sin(2^n 2 pi z) for n in exponents, cos(... ) for n in exponents], channel blocks (VDM App. C)."""

    def __init__(self, exponents: tuple[int, ...] = (5, 6)):
        super().__init__()
        self.exponents = exponents

    @property
    def num_features(self) -> int:
        return 2 * len(self.exponents)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        angles = torch.cat([(2.0**n * 2 * math.pi) * z for n in self.exponents], dim=1)
        return torch.cat([z, angles.sin(), angles.cos()], dim=1)


def timestep_embedding(steps: torch.Tensor, dim: int, max_timescale: float = 10_000.0) -> torch.Tensor:
    """[sin(steps * w_k), cos(steps * w_k)] with w_k geometric from 1 to 1/max_timescale (both ends included)."""
    inv_timescales = torch.logspace(0, -math.log10(max_timescale), dim // 2, device=steps.device)
    angles = steps.to(torch.float32)[:, None] * inv_timescales[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


@torch.no_grad()
def zero_init(module: nn.Module) -> nn.Module:
    """Set all of a module's parameters to zero (each block starts as its skip path)."""
    for parameter in module.parameters():
        parameter.zero_()
    return module


def load_vdm_checkpoint_state(checkpoint: dict, use_ema: bool = True) -> dict[str, torch.Tensor]:
    """The U-Net state dict inside a checkpoint of the re-implementation.

    Its `model.pt` is {"step", "model": VDM state dict ("model.<unet key>", plus "gamma.*" for a
    learned schedule), "opt", "ema": ema_pytorch.EMA state dict ("ema_model.model.<unet key>",
    "online_model.model.<unet key>", "initted", "step")}. `use_ema` picks the EMA weights. A
    bare VDM, EMA or U-Net state dict is accepted too. Load the file without running code:
    `torch.load(path, map_location="cpu", weights_only=True)`.
    """
    if "ema" in checkpoint or "model" in checkpoint:
        key = "ema" if use_ema else "model"
        if key not in checkpoint:
            raise ValueError(f"VDM checkpoint has no {key!r} entry (has {sorted(checkpoint)}); "
                             f"use_ema={use_ema} needs it")
        checkpoint = checkpoint[key]
    for prefix in ("ema_model.model.", "model.", ""):
        state = {k[len(prefix):]: v for k, v in checkpoint.items() if k.startswith(prefix)}
        if any(k.startswith("conv_in.") for k in state):
            return state
    raise ValueError("no VDM U-Net weights (keys '[ema_model.][model.]conv_in.*') found in the checkpoint; "
                     f"first keys: {sorted(checkpoint)[:5]}")

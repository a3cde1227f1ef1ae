"""EDM's DDPM++ network (`SongUNet`), after Karras et al. 2022 (NVlabs' `training/networks.py`), itself
a re-implementation of DDPM++/NCSN++ (Song et al. 2021, "Score-based generative modeling through SDEs").
Its VP and VE preconditionings are in `nvlabs_precond`.

Every module, parameter and buffer carries NVlabs' name, so the `ema` network of a published EDM
checkpoint loads with `nvlabs_precond.VPPrecond(**DDPMPP_PRESETS["cifar10"]).load_state_dict(state)`: keys
`model.map_noise...`, `model.map_layer0.weight`, `model.enc.32x32_conv.weight`,
`model.enc.32x32_block0.norm0.weight`, `model.dec.16x16_block0.qkv.weight`, ...
Numerics follow the original: q/k/v interleaved per channel, GroupNorm eps 1e-6, resampling by a
separable FIR filter, residual sums scaled by sqrt(0.5), the noise embedding fed as [sin | cos].
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

# The published EDM CIFAR-10 VP/DDPM++ network (NVlabs' train.py with --arch=ddpmpp --precond=vp,
# --augment=0.12 adds augment_dim=9, --dropout=0.13): 425 tensors, 55,733,923 values.
DDPMPP_PRESETS = {
    "cifar10": dict(
        img_resolution=32, img_channels=3, label_dim=0, augment_dim=9, model_channels=128,
        channel_mult=[2, 2, 2], channel_mult_emb=4, num_blocks=4, attn_resolutions=[16], dropout=0.13,
        embedding_type="positional", channel_mult_noise=1, encoder_type="standard",
        decoder_type="standard", resample_filter=[1, 1]),
}


def weight_init(shape, mode: str, fan_in: int, fan_out: int) -> torch.Tensor:
    """NVlabs' initialisers (uniform on [-a, a] or normal, with the named fan scaling)."""
    if mode == "xavier_uniform":
        return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == "xavier_normal":
        return math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == "kaiming_uniform":
        return math.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if mode == "kaiming_normal":
        return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f"unknown init_mode {mode!r}; allowed: xavier_uniform, xavier_normal, "
                     "kaiming_uniform, kaiming_normal")


class Linear(nn.Module):
    """y = x W^T + b with NVlabs' initialisation."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 init_mode: str = "kaiming_normal", init_weight: float = 1, init_bias: float = 0):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        fans = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = nn.Parameter(weight_init([out_features, in_features], **fans) * init_weight)
        self.bias = nn.Parameter(weight_init([out_features], **fans) * init_bias) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


class Conv2d(nn.Module):
    """'Same' convolution (kernel 0 = none) with optional 2x up/downsampling by a FIR filter.

    The filter f is the outer product of `resample_filter` with itself, normalised to sum 1:
    [1,1] is 2x2 average pooling down and nearest-neighbour up. Resampling runs before the
    convolution, except `fused_resample` downsampling, which convolves first (NCSN++'s residual encoder).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True,
                 up: bool = False, down: bool = False, resample_filter=(1, 1), fused_resample: bool = False,
                 init_mode: str = "kaiming_normal", init_weight: float = 1, init_bias: float = 0):
        super().__init__()
        if up and down:
            raise ValueError("Conv2d can resample up or down, not both")
        if fused_resample and up:
            raise ValueError("Conv2d supports fused_resample for downsampling only")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.fused_resample = up, down, fused_resample
        fans = dict(mode=init_mode, fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel)
        shape = [out_channels, in_channels, kernel, kernel]
        self.weight = nn.Parameter(weight_init(shape, **fans) * init_weight) if kernel else None
        self.bias = nn.Parameter(weight_init([out_channels], **fans) * init_bias) if kernel and bias else None
        f = torch.as_tensor(resample_filter, dtype=torch.float32)
        f = torch.outer(f, f)[None, None] / f.sum().square()
        self.register_buffer("resample_filter", f if up or down else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.to(x.dtype)
        w_pad = 0 if w is None else w.shape[-1] // 2
        if self.up or self.down:
            f = self.resample_filter.to(x.dtype)
            f_pad = (f.shape[-1] - 1) // 2
        if self.fused_resample and self.down and w is not None:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = F.conv2d(x, f.tile([self.out_channels, 1, 1, 1]), groups=self.out_channels, stride=2)
        else:
            if self.up:  # zero-stuffing transpose conv; gain 4 keeps the mean
                x = F.conv_transpose2d(x, (4 * f).tile([self.in_channels, 1, 1, 1]),
                                       groups=self.in_channels, stride=2, padding=f_pad)
            if self.down:
                x = F.conv2d(x, f.tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2, padding=f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return x


class GroupNorm(nn.Module):
    """Group normalisation with min(32, C/4) groups and an affine map per channel."""

    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


def attention(qkv: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Self-attention over pixels. qkv [N, 3C, H, W] holds, for each head and each of its channels c,
    the triple (q_c, k_c, v_c) in consecutive channels (interleaved, NVlabs' layout).
    out[c, i] = sum_j softmax_j(q_i . k_j / sqrt(C/heads)) v[c, j], returned as [N, C, H, W]."""
    n, c3, h, w = qkv.shape
    c_head = c3 // (3 * num_heads)
    q, k, v = qkv.reshape(n, num_heads, c_head, 3, h * w).unbind(3)  # each [N, heads, C_head, HW]
    out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
    return out.transpose(-1, -2).reshape(n, c3 // 3, h, w)


class UNetBlock(nn.Module):
    """DDPM++ residual block: GN-SiLU-conv0 (optionally resampling), + affine(emb), GN-SiLU-dropout-conv1,
    plus the (projected) input, times skip_scale; then optionally residual self-attention, times skip_scale."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up: bool = False,
                 down: bool = False, attention: bool = False, num_heads: int = 1, dropout: float = 0,
                 skip_scale: float = 1, eps: float = 1e-5, resample_filter=(1, 1),
                 init: dict | None = None, init_zero: dict | None = None, init_attn: dict | None = None):
        super().__init__()
        init = init or {}
        init_zero = dict(init_weight=0) if init_zero is None else init_zero
        init_attn = init if init_attn is None else init_attn
        self.in_channels, self.out_channels, self.emb_channels = in_channels, out_channels, emb_channels
        self.num_heads = num_heads if attention else 0
        self.dropout, self.skip_scale = dropout, skip_scale

        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, 3, up=up, down=down, resample_filter=resample_filter, **init)
        self.affine = Linear(emb_channels, out_channels, **init)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, 3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:  # 1x1 projection, resampled like conv0
            self.skip = Conv2d(in_channels, out_channels, 1, up=up, down=down, resample_filter=resample_filter, **init)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, 3 * out_channels, 1, **init_attn)
            self.proj = Conv2d(out_channels, out_channels, 1, **init_zero)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))
        x = F.silu(self.norm1(x + self.affine(emb)[:, :, None, None].to(x.dtype)))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = (x + (orig if self.skip is None else self.skip(orig))) * self.skip_scale
        if self.num_heads:
            x = (x + self.proj(attention(self.qkv(self.norm2(x)), self.num_heads))) * self.skip_scale
        return x


class PositionalEmbedding(nn.Module):
    """Transformer sinusoids [sin(x w_k) | cos(x w_k)], w_k = max_positions^(-k/(K-1)) with the
    endpoint 1/max_positions included (K = num_channels/2); without endpoint, the exponent is k/K.
    This is the order SongUNet feeds its mapping network (NVlabs computes cos|sin, then swaps halves)."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=x.device) / (half - int(self.endpoint))
        angles = torch.outer(x, ((1 / self.max_positions) ** freqs).to(x.dtype))
        return torch.cat([angles.sin(), angles.cos()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features [sin(2 pi x f_k) | cos(2 pi x f_k)], f_k ~ N(0, scale^2) (NCSN++), in SongUNet's order."""

    def __init__(self, num_channels: int, scale: float = 16):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([angles.sin(), angles.cos()], dim=1)


class SongUNet(nn.Module):
    """DDPM++ (embedding 'positional', encoder/decoder 'standard', filter [1,1]) or NCSN++ ('fourier',
    'residual', [1,3,3,1]). `net(x, noise_labels, class_labels=None, augment_labels=None) -> F(x)`
    with x [N, in_channels, R, R] and noise_labels [N]; keyword names and defaults are NVlabs'."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
                 augment_dim: int = 0, model_channels: int = 128, channel_mult=(1, 2, 2, 2),
                 channel_mult_emb: int = 4, num_blocks: int = 4, attn_resolutions=(16,), dropout: float = 0.10,
                 label_dropout: float = 0, embedding_type: str = "positional", channel_mult_noise: int = 1,
                 encoder_type: str = "standard", decoder_type: str = "standard", resample_filter=(1, 1)):
        super().__init__()
        check_choice("embedding_type", embedding_type, ("positional", "fourier"))
        check_choice("encoder_type", encoder_type, ("standard", "skip", "residual"))
        check_choice("decoder_type", decoder_type, ("standard", "skip"))
        if img_resolution % (1 << (len(channel_mult) - 1)):
            raise ValueError(f"img_resolution={img_resolution} must be divisible by 2^(len(channel_mult)-1) "
                             f"for channel_mult={list(channel_mult)}")
        self.img_resolution, self.in_channels, self.out_channels = img_resolution, in_channels, out_channels
        self.label_dim, self.augment_dim, self.label_dropout = label_dim, augment_dim, label_dropout
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = dict(init_mode="xavier_uniform")
        init_zero = dict(init_mode="xavier_uniform", init_weight=1e-5)
        init_attn = dict(init_mode="xavier_uniform", init_weight=math.sqrt(0.2))
        block_kwargs = dict(emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5),
                            eps=1e-6, resample_filter=resample_filter, init=init, init_zero=init_zero,
                            init_attn=init_attn)

        # Mapping: noise label (+ class label + augmentation label) -> embedding.
        if embedding_type == "positional":
            self.map_noise = PositionalEmbedding(noise_channels, endpoint=True)
        else:
            self.map_noise = FourierEmbedding(noise_channels)
        self.map_label = Linear(label_dim, noise_channels, **init) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False, **init) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)

        # Encoder: per resolution, a conv (first level) or a downsampling block, then num_blocks blocks.
        self.enc = nn.ModuleDict()
        cout, caux = in_channels, in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, 3, **init)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block_kwargs)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(caux, caux, 0, down=True, resample_filter=resample_filter)
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, 1, **init)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(
                        caux, cout, 3, down=True, resample_filter=resample_filter, fused_resample=True, **init)
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(
                    cin, cout, attention=res in attn_resolutions, **block_kwargs)
        skips = [block.out_channels for name, block in self.enc.items() if "aux" not in name]

        # Decoder: two middle blocks (or an upsampling block), then num_blocks + 1 blocks taking one skip each.
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block_kwargs)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(
                    cin, cout, attention=idx == num_blocks and res in attn_resolutions, **block_kwargs)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(
                        out_channels, out_channels, 0, up=True, resample_filter=resample_filter)
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, out_channels, 3, **init_zero)

    def embedding(self, noise_labels: torch.Tensor, class_labels=None, augment_labels=None) -> torch.Tensor:
        """The conditioning vector [N, emb_channels] fed to every block."""
        emb = self.map_noise(noise_labels)
        if self.map_label is not None:
            labels = class_labels
            if self.training and self.label_dropout:  # drop whole label vectors (classifier-free guidance)
                keep = torch.rand([emb.shape[0], 1], device=emb.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels * math.sqrt(self.label_dim))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        return F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels=None, augment_labels=None):
        emb = self.embedding(noise_labels, class_labels, augment_labels)
        skips, aux = [], x
        for name, block in self.enc.items():
            if "aux_down" in name:
                aux = block(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + block(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
            else:
                x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)
        aux = tmp = None
        for name, block in self.dec.items():
            if "aux_up" in name:
                aux = block(aux)
            elif "aux_norm" in name:
                tmp = block(x)
            elif "aux_conv" in name:
                tmp = block(F.silu(tmp))
                aux = tmp if aux is None else tmp + aux
            else:
                if x.shape[1] != block.in_channels:  # every block but in0/in1/up takes the next skip
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return aux


def check_choice(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; allowed: {', '.join(map(repr, allowed))}")

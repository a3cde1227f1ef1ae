"""EDM's DDPM++ (SongUNet) and VPPrecond: the published CIFAR-10 layout, and the numerics that layout
relies on (embedding order, interleaved q/k/v, GroupNorm eps, resampling, skip scaling, c_noise),
each checked against the math written out here. (VEPrecond and EDMPrecond: test_edm_preconditionings.)"""
import math

import numpy as np
import pytest
import torch

from expertmerge.networks.ddpmpp import (
    DDPMPP_PRESETS, Conv2d, GroupNorm, PositionalEmbedding, SongUNet, UNetBlock, attention)
from expertmerge.networks.nvlabs_precond import VPPrecond

BETA_D, BETA_MIN, M, EPSILON_T = 19.9, 0.1, 1000, 1e-5
TINY = dict(img_resolution=8, img_channels=3, model_channels=8, channel_mult=[1, 2], num_blocks=1,
            attn_resolutions=[4], dropout=0.0)


@pytest.fixture(scope="module")
def cifar10_net():
    torch.manual_seed(0)
    return VPPrecond(**DDPMPP_PRESETS["cifar10"]).eval().requires_grad_(False)


def test_cifar10_state_dict_is_the_published_layout(cifar10_net):
    state = cifar10_net.state_dict()
    assert len(state) == 425
    assert sum(v.numel() for v in state.values()) == 55_733_923
    # 8 resampling filters (2x2, [1,1] -> 1/4 each) are buffers; everything else is a parameter.
    filters = {k: v for k, v in state.items() if k.endswith("resample_filter")}
    assert len(filters) == 8 and all(torch.equal(f, torch.full([1, 1, 2, 2], 0.25)) for f in filters.values())
    assert sum(p.numel() for p in cifar10_net.parameters()) == 55_733_923 - 8 * 4
    shapes = {
        "model.map_augment.weight": (128, 9),
        "model.map_layer0.weight": (512, 128),
        "model.map_layer1.bias": (512,),
        "model.enc.32x32_conv.weight": (128, 3, 3, 3),
        "model.enc.32x32_block0.norm0.weight": (128,),
        "model.enc.32x32_block0.affine.weight": (256, 512),
        "model.enc.32x32_block0.skip.weight": (256, 128, 1, 1),
        "model.enc.16x16_down.conv0.weight": (256, 256, 3, 3),
        "model.enc.16x16_block0.qkv.weight": (768, 256, 1, 1),
        "model.dec.8x8_in0.proj.weight": (256, 256, 1, 1),
        "model.dec.16x16_block4.qkv.weight": (768, 256, 1, 1),
        "model.dec.32x32_block0.conv0.weight": (256, 512, 3, 3),
        "model.dec.32x32_aux_norm.weight": (256,),
        "model.dec.32x32_aux_conv.weight": (3, 256, 3, 3),
    }
    assert {k: tuple(state[k].shape) for k in shapes} == shapes
    assert all(k.startswith("model.") for k in state)
    assert [k for k in state if "qkv.weight" in k] == [
        *(f"model.enc.16x16_block{i}.qkv.weight" for i in range(4)),
        "model.dec.8x8_in0.qkv.weight", "model.dec.16x16_block4.qkv.weight"]


def test_cifar10_forward_shapes_and_round_trip(cifar10_net):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.02, 5.0])
    with torch.no_grad():
        D = cifar10_net(x, sigma)
        F_x = cifar10_net.model(x, torch.tensor([10.0, 500.0]))
    assert D.shape == F_x.shape == (2, 3, 32, 32) and D.dtype == torch.float32
    assert torch.isfinite(D).all()
    torch.manual_seed(123)  # different random weights, then overwritten by the state dict
    copy = VPPrecond(**DDPMPP_PRESETS["cifar10"]).eval()
    copy.load_state_dict(cifar10_net.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(copy(x, sigma), D)


def test_vp_schedule_and_c_noise_match_the_closed_form():
    net = VPPrecond(**TINY).eval()
    t = np.linspace(EPSILON_T, 1, 7)
    sigma = np.sqrt(np.exp(0.5 * BETA_D * t**2 + BETA_MIN * t) - 1)  # EDM Table 1, VP schedule
    assert np.allclose(net.sigma(torch.tensor(t)).numpy(), sigma, rtol=1e-12)
    assert np.allclose(net.sigma_inv(torch.tensor(sigma)).numpy(), t, rtol=1e-10)
    assert net.sigma_min == pytest.approx(sigma[0], rel=1e-6) and net.sigma_max == pytest.approx(sigma[-1], rel=1e-6)

    seen = {}

    class Spy(torch.nn.Module):  # F(x; c_noise) = 3 x, recording what the network is fed
        def forward(self, x, noise_labels, class_labels=None, augment_labels=None):
            seen.update(x=x, noise_labels=noise_labels)
            return 3 * x

    net.model = Spy()
    x = torch.randn(7, 3, 8, 8)
    s = torch.tensor(sigma, dtype=torch.float32)
    D = net(x, s)
    c_in = 1 / np.sqrt(sigma**2 + 1)
    # c_noise = (M - 1) t, computed in float32 as NVlabs does: log(1 + sigma^2) rounds to ~6e-8,
    # i.e. (M - 1) * 6e-8 / beta_min ~ 6e-4 in c_noise near sigma = 0.
    assert np.allclose(seen["noise_labels"].numpy(), (M - 1) * t, rtol=1e-5, atol=1e-3)
    assert torch.allclose(seen["x"], x * torch.tensor(c_in, dtype=torch.float32).reshape(-1, 1, 1, 1))
    # D = c_skip x + c_out F with c_skip = 1, c_out = -sigma.
    expected = x * (1 - 3 * torch.tensor(sigma * c_in, dtype=torch.float32).reshape(-1, 1, 1, 1))
    assert torch.allclose(D, expected, atol=1e-5)
    assert torch.equal(net(x, 2.0), net(x, torch.full([7], 2.0)))  # a number is broadcast over the batch


def test_positional_embedding_is_sin_then_cos_with_the_endpoint():
    x = torch.tensor([0.0, 1.0, 250.0])
    emb = PositionalEmbedding(4, endpoint=True)(x)  # frequencies 1 and 1/10000
    angles = torch.stack([x, x / 10000], dim=1)
    assert torch.allclose(emb, torch.cat([angles.sin(), angles.cos()], dim=1))
    emb = PositionalEmbedding(4)(x)  # without the endpoint: 1 and 1/100
    angles = torch.stack([x, x / 100], dim=1)
    assert torch.allclose(emb, torch.cat([angles.sin(), angles.cos()], dim=1))


def test_song_unet_feeds_its_mapping_network_sin_then_cos():
    net = SongUNet(8, 3, 3, model_channels=8, channel_mult=[1], num_blocks=1, attn_resolutions=[]).eval()
    fed = []
    net.map_layer0.register_forward_hook(lambda module, inputs, output: fed.append(inputs[0]))
    c_noise = torch.tensor([3.0, 700.0])
    net(torch.randn(2, 3, 8, 8), c_noise)
    angles = torch.outer(c_noise, 1e-4 ** (torch.arange(4) / 3))
    assert torch.allclose(fed[0], torch.cat([angles.sin(), angles.cos()], dim=1))


@pytest.mark.parametrize("num_heads", [1, 2])
def test_attention_reads_interleaved_q_k_v(num_heads):
    n, c, h, w = 2, 4, 3, 2
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(n, c, h * w, generator=g) for _ in range(3))
    # Channel 3 m + j holds q_m, k_m, v_m for j = 0, 1, 2; head i owns channels m in [i c/heads, (i+1) c/heads).
    qkv = torch.stack([q, k, v], dim=2).reshape(n, 3 * c, h, w)
    out = attention(qkv, num_heads).reshape(n, c, h * w)
    d = c // num_heads
    for i in range(num_heads):
        head = slice(i * d, (i + 1) * d)
        logits = torch.einsum("nci,ncj->nij", q[:, head], k[:, head]) / math.sqrt(d)
        expected = torch.einsum("nij,ncj->nci", logits.softmax(dim=2), v[:, head])
        assert torch.allclose(out[:, head], expected, atol=1e-6)


def test_group_norm_uses_eps_1e_6_and_at_least_4_channels_per_group():
    net = SongUNet(8, 3, 3, model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4])
    norms = [m for m in net.modules() if isinstance(m, GroupNorm)]
    assert norms and all(m.eps == 1e-6 for m in norms)
    assert {m.weight.numel(): m.num_groups for m in norms} == {16: 4, 32: 8, 48: 12, 64: 16}
    norm = GroupNorm(8, eps=1e-6)  # variance ~1e-6, where eps 1e-5 and 1e-6 differ
    x = 1e-3 * torch.randn(2, 8, 4, 4, dtype=torch.float64)
    groups = x.reshape(2, 2, -1)
    expected = (groups - groups.mean(-1, keepdim=True)) / (groups.var(-1, unbiased=False, keepdim=True) + 1e-6).sqrt()
    assert torch.allclose(norm.to(torch.float64)(x), expected.reshape(x.shape), atol=1e-10)


def test_resampling_with_filter_1_1_is_average_pooling_and_nearest_upsampling():
    x = torch.randn(2, 3, 4, 4)
    down = Conv2d(3, 3, 0, down=True, resample_filter=[1, 1])
    up = Conv2d(3, 3, 0, up=True, resample_filter=[1, 1])
    assert torch.allclose(down(x), torch.nn.functional.avg_pool2d(x, 2))
    assert torch.allclose(up(x), x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))
    smooth = Conv2d(3, 3, 0, down=True, resample_filter=[1, 3, 3, 1])  # normalised: keeps constants
    assert torch.allclose(smooth(torch.ones(1, 3, 8, 8))[..., 1:-1, 1:-1], torch.ones(1, 3, 2, 2))


def test_residual_sums_are_scaled_by_sqrt_half():
    block = UNetBlock(8, 8, emb_channels=16, attention=True, skip_scale=math.sqrt(0.5), eps=1e-6)
    with torch.no_grad():  # zero residual branches: only the skip paths remain
        for layer in (block.conv1, block.proj):
            layer.weight.zero_()
            layer.bias.zero_()
    x, emb = torch.randn(2, 8, 4, 4), torch.randn(2, 16)
    assert torch.allclose(block(x, emb), 0.5 * x)  # sqrt(0.5) after the conv branch, again after attention


def test_bad_inputs_get_clear_errors():
    with pytest.raises(ValueError, match="embedding_type"):
        SongUNet(8, 3, 3, embedding_type="sinusoidal")
    with pytest.raises(ValueError, match="model_type"):
        VPPrecond(8, 3, model_type="DhariwalUNet")
    net = VPPrecond(**TINY)
    with pytest.raises(ValueError, match=r"x of shape \[N, 3, 8, 8\]"):
        net(torch.randn(2, 3, 16, 16), 1.0)
    with pytest.raises(ValueError, match="sigma"):
        net(torch.randn(2, 3, 8, 8), torch.ones(3))

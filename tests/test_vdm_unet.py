import math

import pytest
import torch

from expertmerge.experts import VDMExpert
from expertmerge.networks.vdm_unet import (
    VDM_PRESETS, FourierFeatures, VDMUNet, load_vdm_checkpoint_state, timestep_embedding)

FULL_SIZE = dict(embedding_dim=128, n_blocks=32, n_attention_heads=1, dropout_prob=0.1, norm_groups=32,
                 input_channels=3, use_fourier_features=True, attention_everywhere=False)


def upstream_keys(embedding_dim, n_blocks, n_attention_heads, dropout_prob, norm_groups, input_channels,
                  use_fourier_features, attention_everywhere):
    """(name, shape) of every tensor in addtt/variational-diffusion-models' UNetVDM state dict, in
    registration order, written down from its vdm_unet.py (nn.Sequential indices included)."""
    e, c = embedding_dim, input_channels

    def norm(prefix, ch):
        return [(f"{prefix}.weight", (ch,)), (f"{prefix}.bias", (ch,))]

    def conv(prefix, ch_in, ch_out, k):
        return [(f"{prefix}.weight", (ch_out, ch_in, k, k)), (f"{prefix}.bias", (ch_out,))]

    def resnet(prefix, ch_in):
        conv2 = "net2.3" if dropout_prob > 0 else "net2.2"  # nn.Dropout sits at index 2 only if used
        keys = norm(f"{prefix}.net1.0", ch_in) + conv(f"{prefix}.net1.2", ch_in, e, 3)
        keys += [(f"{prefix}.cond_proj.weight", (e, 4 * e))]
        keys += norm(f"{prefix}.net2.0", e) + conv(f"{prefix}.{conv2}", e, e, 3)
        return keys + (conv(f"{prefix}.skip_conv", ch_in, e, 1) if ch_in != e else [])

    def attention(prefix):
        return (norm(f"{prefix}.layers.0", e) + conv(f"{prefix}.layers.1", e, 3 * e, 1)
                + conv(f"{prefix}.layers.3", e, e, 1))

    def level(prefix, ch_in):
        return resnet(f"{prefix}.resnet_block", ch_in) + (
            attention(f"{prefix}.attention_block") if attention_everywhere else [])

    features = 5 if use_fourier_features else 1  # z, sin and cos at 2^5 and 2^6
    keys = [("embed_conditioning.0.weight", (4 * e, e)), ("embed_conditioning.0.bias", (4 * e,)),
            ("embed_conditioning.2.weight", (4 * e, 4 * e)), ("embed_conditioning.2.bias", (4 * e,))]
    keys += conv("conv_in", features * c, e, 3)
    for i in range(n_blocks):
        keys += level(f"down_blocks.{i}", e)
    keys += resnet("mid_resnet_block_1", e) + attention("mid_attn_block") + resnet("mid_resnet_block_2", e)
    for i in range(n_blocks + 1):
        keys += level(f"up_blocks.{i}", 2 * e)
    return keys + norm("conv_out.0", e) + conv("conv_out.2", e, c, 3)


def parameter_count(embedding_dim, n_blocks, input_channels=3, features=5):
    """Closed-form count for the default layout (no attention at the levels, one head)."""
    e, c = embedding_dim, input_channels

    def resnet(ch_in):
        return (2 * ch_in + 9 * ch_in * e + e + 4 * e * e + 2 * e + 9 * e * e + e
                + (ch_in * e + e if ch_in != e else 0))

    conditioning = (e * 4 * e + 4 * e) + (16 * e * e + 4 * e)
    attention = 2 * e + (3 * e * e + 3 * e) + (e * e + e)
    ends = (9 * features * c * e + e) + (2 * e + 9 * e * c + c)
    return conditioning + ends + (n_blocks + 2) * resnet(e) + attention + (n_blocks + 1) * resnet(2 * e)


def small_net(seed=0, **overrides):
    """A 2-block net whose zero-initialised layers get random weights, so every path matters."""
    torch.manual_seed(seed)
    net = VDMUNet(**{**FULL_SIZE, "embedding_dim": 32, "norm_groups": 8, "n_blocks": 2, **overrides}).eval()
    with torch.no_grad():
        for parameter in net.parameters():
            if not parameter.any():
                parameter.normal_(0, 0.05)
    return net


def test_full_size_forward_shapes_and_parameter_count():
    net = VDMUNet(**FULL_SIZE).eval()
    assert sum(p.numel() for p in net.parameters()) == parameter_count(128, 32)
    z = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(z, torch.tensor([-13.3, 5.0])), z)  # output conv starts at zero: eps_hat = z
        net.conv_out[2].weight.normal_(0, 0.01)
        eps_hat = net(z, torch.tensor([-13.3, 5.0]))
    assert eps_hat.shape == z.shape and eps_hat.dtype == torch.float32
    assert torch.isfinite(eps_hat).all() and not torch.equal(eps_hat, z)


@pytest.mark.parametrize("preset", sorted(VDM_PRESETS))
def test_presets_parameter_count(preset):
    with torch.device("meta"):
        net = VDMUNet(**VDM_PRESETS[preset])
    assert sum(p.numel() for p in net.parameters()) == parameter_count(VDM_PRESETS[preset]["embedding_dim"], 32)


@pytest.mark.parametrize("config", [
    FULL_SIZE,
    {**FULL_SIZE, "embedding_dim": 256},
    {**FULL_SIZE, "n_blocks": 3, "dropout_prob": 0.0, "attention_everywhere": True, "n_attention_heads": 4},
    {**FULL_SIZE, "n_blocks": 1, "use_fourier_features": False, "input_channels": 1},
])
def test_state_dict_names_and_shapes_match_upstream(config):
    with torch.device("meta"):
        net = VDMUNet(**config)
    ours = [(name, tuple(t.shape)) for name, t in net.state_dict().items()]
    assert ours == upstream_keys(**config)


def test_loads_upstream_checkpoint_without_running_code(tmp_path):
    source = small_net(seed=1)
    state = source.state_dict()
    checkpoint = {
        "step": 7,
        "model": {**{"model." + k: v + 1 for k, v in state.items()}, "gamma.b": torch.tensor(-13.3)},
        "opt": {"state": {}, "param_groups": [{"lr": 2e-4, "params": [0, 1]}]},
        "ema": {"initted": torch.tensor([1.0]), "step": torch.tensor([7]),
                **{"online_model.model." + k: v + 1 for k, v in state.items()},
                **{"ema_model.model." + k: v for k, v in state.items()}},
    }
    torch.save(checkpoint, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", map_location="cpu", weights_only=True)
    target = small_net(seed=2)
    target.load_state_dict(load_vdm_checkpoint_state(loaded))  # strict: every key exactly once
    z, gamma = torch.randn(3, 3, 32, 32), torch.tensor([-10.0, 0.0, 4.0])
    with torch.no_grad():
        assert torch.equal(target(z, gamma), source(z, gamma))
    online = load_vdm_checkpoint_state(loaded, use_ema=False)
    assert all(torch.equal(online[k], state[k] + 1) for k in state)
    assert load_vdm_checkpoint_state(state).keys() == state.keys()  # a bare U-Net state dict
    with pytest.raises(ValueError, match="conv_in"):
        load_vdm_checkpoint_state({"foo.weight": torch.zeros(1)})


def test_gamma_is_normalised_by_the_configured_range():
    default = small_net(seed=3)
    unit = small_net(seed=3, gamma_min=0.0, gamma_max=1.0)
    z, gamma = torch.randn(2, 3, 32, 32), torch.tensor([-7.0, 2.5])
    with torch.no_grad():  # (gamma - gamma_min) / (gamma_max - gamma_min) is all the net sees of gamma
        torch.testing.assert_close(default(z, gamma), unit(z, (gamma + 13.3) / 18.3), atol=1e-4, rtol=1e-4)
        assert not torch.allclose(default(z, gamma), default(z, gamma.flip(0)))


def test_timestep_embedding_closed_form():
    steps = torch.tensor([0.0, 1.0, 730.0])
    emb = timestep_embedding(steps, 8)
    frequencies = 10_000.0 ** (-torch.arange(4) / 3)  # from 1 down to 1/10000, both included
    expected = torch.cat([(steps[:, None] * frequencies).sin(), (steps[:, None] * frequencies).cos()], 1)
    torch.testing.assert_close(emb, expected)


def test_fourier_feature_channel_layout():
    z = torch.rand(2, 3, 4, 4) * 2 - 1
    features = FourierFeatures()(z)
    angle = [2.0**n * 2 * math.pi * z for n in (5, 6)]
    expected = torch.cat([z, angle[0].sin(), angle[1].sin(), angle[0].cos(), angle[1].cos()], dim=1)
    torch.testing.assert_close(features, expected)


def test_images_do_not_depend_on_their_batch():
    net = small_net(seed=4)
    z, gamma = torch.randn(3, 3, 32, 32), torch.tensor([-12.0, -1.0, 3.0])
    with torch.no_grad():
        torch.testing.assert_close(net(z, gamma)[1:2], net(z[1:2], gamma[1:2]), atol=1e-5, rtol=1e-5)


def test_as_vdm_expert_zero_init_closed_form():
    net = VDMUNet(**{**FULL_SIZE, "embedding_dim": 32, "norm_groups": 8, "n_blocks": 1})
    expert = VDMExpert(net, net.gamma_min, net.gamma_max)
    x, s = torch.randn(2, 3, 32, 32), torch.tensor([0.1, 3.0], dtype=torch.float64)
    alpha = (1 + s**2) ** -0.5
    with torch.no_grad():  # eps_hat = z = alpha x, so D = x - s alpha x
        expected = x * (1 - s * alpha).float()[:, None, None, None]
        torch.testing.assert_close(expert.denoise(x, s), expected)


def test_bad_inputs_are_refused():
    net = small_net()
    with pytest.raises(ValueError, match=r"gamma of shape \[N\]"):
        net(torch.randn(2, 3, 32, 32), torch.zeros(1))
    with pytest.raises(ValueError, match=r"z of shape \[N, 3, H, W\]"):
        net(torch.randn(2, 1, 32, 32), torch.zeros(2))
    with pytest.raises(ValueError, match="gamma_min < gamma_max"):
        VDMUNet(gamma_min=5.0, gamma_max=-13.3)
    with pytest.raises(ValueError, match="lacks"):
        VDMUNet.from_config({"embedding_dim": 128})


def test_from_upstream_config_ignores_training_fields():
    config = {**FULL_SIZE, "n_blocks": 1, "gamma_min": -13.3, "gamma_max": 5.0, "batch_size": 128, "lr": 2e-4}
    net = VDMUNet.from_config(config)
    assert (net.gamma_min, net.gamma_max, len(net.down_blocks)) == (-13.3, 5.0, 1)

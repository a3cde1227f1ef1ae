"""SmallUNet (networks/small_unet.py) is the network it was before it moved out of nets.py and took
DDPM++'s GroupNorm and PositionalEmbedding: the same state dict for a seed, the same outputs.

The reference numbers below were computed with the old nets.py (torch 2.14, CPU, one thread) on the
demo's two configurations from config.yaml. The pieces that changed are also compared bit for bit
with what nets.py used: torch.nn.GroupNorm with its group count and the [cos | sin] embedding."""
import hashlib
import math

import pytest
import torch

from expertmerge.networks.ddpmpp import GroupNorm
from expertmerge.networks.small_unet import SmallUNet

DEMO = {  # config.yaml, experiments.demo.experts.*.train.network; VDM labels normalised as experts/vdm.py does
    "edm": dict(patch=2, channels=(16, 32)),
    "vdm": dict(patch=1, channels=(8, 16), fourier_exponents=(3, 4), label_offset=-13.3, label_scale=1000 / 18.3),
}
LABELS = {"edm": [math.log(s) / 4 for s in (0.002, 1.0, 80.0)], "vdm": [-13.3, 0.0, 5.0]}
OLD_STATE = {  # sha256 of names, shapes, dtypes and values; tensors; values
    "edm": ("27501eaea104144536bc12ea08f3a38f43f53796b03eead502f21702108e086a", 66, 145252),
    "vdm": ("b940d5f8d0071f98950d708b342f20486dd0f7780e197b865794e4235b4f4a40", 66, 69729),
}
OLD_OUTPUT = {  # sum, and elements 0, 17, 100, 191 of the flattened output
    "edm": (71.30169670470059, [0.04142209142446518, 0.8531395196914673, 0.30556052923202515, 0.20275042951107025]),
    "vdm": (-9.125475655309856, [0.04533843696117401, -0.19472083449363708, -0.033452052623033524, -0.11337810754776001]),
}
OLD_GROUPS = {"edm": {16: 4, 32: 8, 48: 12, 64: 16}, "vdm": {8: 2, 16: 4, 24: 6, 32: 8}}  # channels -> groups


def state_digest(state) -> str:
    digest = hashlib.sha256()
    for name, tensor in state.items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def demo_net(family, randomise=False):
    torch.manual_seed(0)
    net = SmallUNet(**DEMO[family])
    if randomise:  # the output layer starts at zero; random weights make every layer count
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(0.2 * torch.randn(p.shape, generator=generator))
    return net.eval()


@pytest.mark.parametrize("family", DEMO)
def test_state_dict_for_a_seed_is_the_old_one(family):
    state = demo_net(family).state_dict()
    assert (state_digest(state), len(state), sum(t.numel() for t in state.values())) == OLD_STATE[family]


@pytest.mark.parametrize("family", DEMO)
def test_output_is_the_old_one(family):
    net = demo_net(family, randomise=True)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = net(x, torch.tensor(LABELS[family]))
    total, values = OLD_OUTPUT[family]
    assert out.double().sum().item() == pytest.approx(total, rel=1e-6)
    assert out.flatten()[[0, 17, 100, 191]].tolist() == pytest.approx(values, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("family", DEMO)
def test_group_norms_equal_torch_group_norm_with_the_old_group_count(family):
    net = demo_net(family, randomise=True)
    norms = [m for m in net.modules() if isinstance(m, GroupNorm)]
    assert len(norms) == 5 * 2 + 1  # two in each of the five blocks, and norm_out
    assert {m.weight.numel(): m.num_groups for m in norms} == OLD_GROUPS[family]
    generator = torch.Generator().manual_seed(4)
    for norm in norms:
        channels = norm.weight.numel()
        old = torch.nn.GroupNorm(OLD_GROUPS[family][channels], channels, eps=1e-6)
        old.load_state_dict(norm.state_dict())
        x = torch.randn(3, channels, 4, 4, generator=generator)
        assert torch.equal(norm(x), old(x))


def test_group_count_divides_channels_where_nvlabs_rule_does_not():
    # min(32, C // 4) is 4 for 18 channels and 0 for 2; the old rule lowers it to a divisor, at least 1.
    net = SmallUNet(channels=(2, 18), emb_channels=8)
    groups = {m.weight.numel(): m.num_groups for m in net.modules() if isinstance(m, GroupNorm)}
    assert groups == {2: 1, 18: 3, 20: 5, 36: 9}
    assert net(torch.zeros(2, 1, 8, 8), torch.zeros(2)).shape == (2, 1, 8, 8)


@pytest.mark.parametrize("family", DEMO)
def test_noise_embedding_is_the_old_cos_sin_one(family):
    net = demo_net(family, randomise=True)
    labels = torch.tensor(LABELS[family])
    half = 128 // 2  # emb_channels
    freqs = (1 / 10000) ** (torch.arange(half, dtype=torch.float32) / half)
    angles = ((labels - net.label_offset) * net.label_scale).to(torch.float32).ger(freqs)
    old = torch.cat([angles.cos(), angles.sin()], dim=1)
    with torch.no_grad():
        expected = torch.nn.functional.silu(net.map1(torch.nn.functional.silu(net.map0(old))))
        assert torch.equal(net.embedding(labels, len(labels)), expected)

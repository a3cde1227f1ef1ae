"""Named merges of N experts with hard switches and blend windows (issue 24): parsing, range checks, and the
denoiser against `merge.switch_many` / `merge.blend` and the exact Gaussian denoisers."""
import math
import re

import pytest
import torch

from conftest import gaussian_data
from expertmerge.experts.gaussian import GaussianExpert
from expertmerge.merge import blend, switch_many
from expertmerge.merge_plan import Switch, check_merge, parse_switch
from expertmerge.merge_specs import build_merge
from expertmerge.noise import gamma_to_noise_level, linear_gamma

SHAPE = (1, 2, 2)
RANGES = {"edm": (-12.43, 8.764), "flow": (-13.0, 7.0), "vdm": (-13.3, 5.0)}  # high noise to low below


def expert(name, seed):
    return GaussianExpert(*gaussian_data(SHAPE, seed=seed), *RANGES[name])


@pytest.fixture(scope="module")
def three():
    return [expert("edm", 1), expert("flow", 2), expert("vdm", 3)]  # high noise to low


@pytest.mark.parametrize("value, expected", [(0.3, Switch(0.3, 0.3)), (1, Switch(1.0, 1.0)),
                                             ({"blend": [0.2, 0.4]}, Switch(0.2, 0.4))])
def test_switches_parse(value, expected):
    assert parse_switch(value) == expected


@pytest.mark.parametrize("value, message", [(1.5, r"in \[0, 1\]"), ("often", r"in \[0, 1\]"), (True, r"in \[0, 1\]"),
                                            (math.nan, r"in \[0, 1\]"), ({"blend": [0.4, 0.2]}, "eta_a < eta_b"),
                                            ({"blend": [0.2]}, "blend: \\[eta_a, eta_b\\]")])
def test_bad_switches_are_refused_in_one_line(value, message):
    with pytest.raises(ValueError, match=message):
        parse_switch(value)


@pytest.mark.parametrize("names, switches, message", [
    (["edm", "flow", "vdm"], [Switch(0.6, 0.6)], "needs 2 switches"),
    (["edm", "flow", "vdm"], [Switch(0.3, 0.3), Switch(0.6, 0.6)], "from high noise to low"),
    (["edm", "flow", "vdm"], [Switch(0.5, 0.7), Switch(0.6, 0.6)], "may not overlap"),
    (["edm", "flow", "vdm"], [Switch(0.95, 0.95), Switch(0.3, 0.3)], r"from edm to flow at 0.95 .* flow: gamma \[-13, 7\]"),
    (["edm", "vdm"], [Switch(0.5, 0.9)], r"from edm to vdm at a blend over \[0.5, 0.9\] leaves the levels"),
    (["vdm", "edm"], [Switch(0.5, 0.5)], "the lowest-noise expert must reach the lowest gamma"),
])
def test_each_expert_must_cover_the_levels_it_serves(names, switches, message):
    with pytest.raises(ValueError, match=message):
        check_merge(names, switches, RANGES)


def test_hard_switches_are_switch_many_bit_for_bit(three):
    merged = build_merge(three, [Switch(0.7, 0.7), Switch(0.3, 0.3)], ["edm", "flow", "vdm"])
    reference = switch_many(three[::-1], [0.3, 0.7])
    gamma_0, gamma_1 = merged.gamma_min, merged.gamma_max
    gammas = torch.tensor([linear_gamma(t, gamma_0, gamma_1) for t in (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)])
    x = torch.randn(len(gammas), *SHAPE, generator=torch.Generator().manual_seed(0))
    s = gamma_to_noise_level(gammas)
    assert torch.equal(merged.denoise(x, s), reference.denoise(x, s))
    for level in s:  # a whole batch at one level
        assert torch.equal(merged.denoise(x, level.item()), reference.denoise(x, level.item()))


def test_a_blend_of_two_is_merge_blend(three):
    quality, _, likelihood = three
    merged = build_merge([quality, likelihood], [Switch(0.4, 0.6)])
    gamma_0, gamma_1 = merged.gamma_min, merged.gamma_max
    centre, width = linear_gamma(0.5, gamma_0, gamma_1), 0.2 * (gamma_1 - gamma_0)
    reference = blend(quality, likelihood, 0.5, width)
    gammas = torch.linspace(centre - width, centre + width, 9)
    x = torch.randn(9, *SHAPE, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(merged.denoise(x, gamma_to_noise_level(gammas)),
                               reference.denoise(x, gamma_to_noise_level(gammas)), rtol=1e-6, atol=1e-6)


def test_three_experts_with_a_blend_are_the_expected_convex_combination(three):
    edm, flow, vdm = three
    merged = build_merge(three, [Switch(0.6, 0.8), Switch(0.3, 0.3)], ["edm", "flow", "vdm"])
    gamma_0, gamma_1 = merged.gamma_min, merged.gamma_max
    x = torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(2))
    for eta, parts in ((0.9, {edm: 1}), (0.75, {edm: 0.75, flow: 0.25}), (0.65, {edm: 0.25, flow: 0.75}),
                       (0.5, {flow: 1}), (0.3, {flow: 1}), (0.29, {vdm: 1}), (0.0, {vdm: 1})):
        s = gamma_to_noise_level(linear_gamma(eta, gamma_0, gamma_1))
        expected = sum(weight * e.denoise(x, s) for e, weight in parts.items())
        torch.testing.assert_close(merged.denoise(x, s), expected, rtol=1e-5, atol=1e-6, msg=str(eta))


@pytest.mark.parametrize("merge, message", [
    ({"experts": ["edm", "vdm"], "switches": [{"blend": [0.3, 0.5]}]}, None),
    ({"experts": ["edm", "vdm"], "switches": [0.95]}, r"merge 'm': the switch from edm to vdm at 0.95 leaves the levels"),
    ({"experts": ["edm", "flow"], "switches": [0.5]}, r"merge 'm': names the expert 'flow', which the experiment"),
    ({"experts": ["edm", "vdm"], "switches": [0.3, 0.2]}, "needs 1 switches, got 2"),
    ({"experts": ["edm", "vdm"], "switches": [{"blend": [0.5, 0.3]}]}, "eta_a < eta_b"),
])
def test_config_merges_are_checked_before_any_work(tmp_path, merge, message):
    from test_pipeline import reduced_config, snakemake, write_config

    config = reduced_config()
    config["experiments"]["digits"]["merges"] = {"m": merge}
    write_config(tmp_path, config)
    result = snakemake(tmp_path, "-n", check=False)
    if message is None:
        assert result.returncode == 0, result.stderr[-2000:]
    else:
        assert result.returncode != 0 and re.search(message, result.stdout + result.stderr), result.stderr[-2000:]

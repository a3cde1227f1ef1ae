"""Trunk states (issue 23): a sweep's shared trajectories computed once and continued per eta.

Exactness is checked against independent runs of every merge, on Gaussian experts whose ranges are the
paper's: ancestral samples bit for bit (for two shard layouts and batch sizes), the adaptive ODE's samples and
NLL within the solver's tolerance.
"""
import pytest
import torch

from conftest import gaussian_data
from expertmerge import trunks
from expertmerge.experts.gaussian import GaussianExpert
from expertmerge.likelihood import ode_nll
from expertmerge.merge import eta_range, switch, switch_many
from expertmerge.sampling import sample_ancestral, sample_ode

SHAPE = (1, 2, 2)
ETAS = (0.1, 0.3, 0.35, 0.7)  # two on the anchor grid, two between anchors


@pytest.fixture(scope="module")
def experts():
    quality = GaussianExpert(*gaussian_data(SHAPE, seed=1), gamma_min=-12.43, gamma_max=8.764)
    likelihood = GaussianExpert(*gaussian_data(SHAPE, seed=2), gamma_min=-13.3, gamma_max=5.0)
    return quality, likelihood


def merges(experts, etas=ETAS):
    quality, likelihood = experts
    etas = (*etas, eta_range(quality, likelihood)[1])  # eta_max too: its anchor is off the grid
    return {str(eta): (eta, switch(quality, likelihood, eta)) for eta in etas}


ANCESTRAL = {"steps": 64, "clip_denoised": False}
ODE = {"rtol": 1e-5, "atol": 1e-5, "error_norm": "batch-rms"}


@pytest.mark.parametrize("batch_size,shards", [(6, [range(0, 6)]), (2, [range(0, 3), range(3, 6)])])
def test_ancestral_tails_are_bit_identical_to_independent_runs(experts, batch_size, shards):
    sweep = merges(experts)
    shared = [trunks.sweep("ancestral", sweep, 10, seeds, SHAPE, ANCESTRAL, batch_size=batch_size)[0]
              for seeds in shards]
    for label, (_, merged) in sweep.items():
        alone = sample_ancestral(merged, range(6), SHAPE, batch_size=4, **ANCESTRAL)
        pooled = torch.cat([part[label].x for part in shared])
        assert torch.equal(pooled, alone.x), label
        assert torch.equal(torch.cat([part[label].nfe for part in shared]), alone.nfe)


def test_the_ancestral_sweep_saves_the_trunk_evaluations(experts):
    sweep = merges(experts)
    _, evaluations = trunks.sweep("ancestral", sweep, 10, range(4), SHAPE, ANCESTRAL)
    anchors = [trunks.anchor_index("down", eta, 10) / 10 for eta, _ in sweep.values()]
    # the trunk down to the lowest anchor, then each tail from its anchor: steps counted on the merged clock
    expected = round(64 * (1 - min(anchors))) + sum(64 - round(64 * (1 - anchor)) for anchor in anchors)
    assert abs(evaluations - expected) <= len(sweep)  # a step on an anchor's level counts to the trunk side
    assert evaluations < 0.75 * 64 * len(sweep)


def test_ode_samples_and_nll_match_independent_runs_within_tolerance(experts):
    """Measured against a tight solve (rtol = atol = 1e-9): the shared samples are at least as accurate as the
    independent ones (the independent solve's step across the switch is its largest error; the trunk's ends on
    an anchor), the shared NLL as accurate within a factor 2 (+ 0.001 bpd)."""
    sweep = merges(experts, etas=(0.1, 0.35, 0.7))
    shared, evaluations = trunks.sweep("ode", sweep, 10, range(4), SHAPE, ODE, batch_size=4)
    independent = 0
    for label, (_, merged) in sweep.items():
        alone = sample_ode(merged, range(4), SHAPE, batch_size=4, **ODE)
        tight = sample_ode(merged, range(4), SHAPE, batch_size=1, rtol=1e-9, atol=1e-9)
        independent += float(alone.nfe.float().mean())
        error, alone_error = (shared[label].x - tight.x).abs().max(), (alone.x - tight.x).abs().max()
        assert error <= alone_error + 1e-4, label  # not worse than the independent run
    assert evaluations < 0.8 * independent
    images = torch.randint(0, 256, (5, 2, 2, 1), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    nll, evaluations = trunks.sweep("nll", sweep, 10, range(5), SHAPE, {**ODE, "dequantization": "tn"},
                                    images=images)
    independent = 0
    for label, (_, merged) in sweep.items():
        alone = ode_nll(merged, images, **ODE, dequantization="tn")
        tight = ode_nll(merged, images, rtol=1e-9, atol=1e-9, batch_size=1, dequantization="tn")
        independent += float(alone.nfe.float().mean())
        error, alone_error = (nll[label].bpd - tight.bpd).abs().max(), (alone.bpd - tight.bpd).abs().max()
        assert error <= 2 * alone_error + 1e-3, label  # the independent run's accuracy, within a factor 2
    assert evaluations < independent


@pytest.mark.parametrize("direction,eta,index", [("down", 0.3, 3), ("down", 0.31, 4), ("down", 0.0394, 1),
                                                 ("up", 0.3, 3), ("up", 0.31, 3), ("up", 0.8294, 8),
                                                 ("down", 0.96, 10), ("up", 0.05, 0)])
def test_anchors_lie_on_the_trunks_side_of_the_switch(direction, eta, index):
    assert trunks.anchor_index(direction, eta, 10) == index
    k = trunks.anchor_index(direction, eta, 10)
    assert (k / 10 >= eta) if direction == "down" else (k / 10 <= eta)


def test_a_stored_state_continues_exactly_after_a_round_trip(experts, tmp_path):
    (eta, merged), = [merges(experts)["0.35"]]
    state = trunks.advance(trunks.start("ancestral", merged, range(3), SHAPE, ANCESTRAL), merged, 0.5)
    trunks.save_trunk_state(tmp_path / "state.npz", state)
    loaded = trunks.load_trunk_state(tmp_path / "state.npz")
    assert loaded.next_step == state.next_step and loaded.expert == state.expert
    assert torch.equal(trunks.finish_samples(loaded, merged).x, trunks.finish_samples(state, merged).x)
    assert torch.equal(trunks.finish_samples(loaded, merged).x,
                       sample_ancestral(merged, range(3), SHAPE, **ANCESTRAL).x)


def test_a_merge_off_the_trunks_path_is_refused(experts):
    quality, likelihood = experts
    merged = switch(quality, likelihood, 0.3)
    state = trunks.advance(trunks.start("ancestral", merged, range(2), SHAPE, ANCESTRAL), merged, 0.5)
    # an "auto" merge whose high-noise piece is another expert
    other = GaussianExpert(*gaussian_data(SHAPE, seed=3), gamma_min=-13.3, gamma_max=8.764)
    upside_down = switch_many([likelihood, other], [0.4])
    with pytest.raises(ValueError, match="another expert than the trunk's"):
        trunks.finish_samples(state, upside_down)
    with pytest.raises(ValueError, match="not served by one expert"):
        trunks.advance(state, merged, 0.2)  # across the switch at 0.3
    with pytest.raises(ValueError, match="runs down"):
        trunks.advance(state, merged, 0.6)


def test_a_clock_whose_top_is_missed_by_an_ulp_still_serves_the_trunk():
    """gamma_min + 1 * (gamma_max - gamma_min) rounds away from gamma_max for about half of all clocks
    (here 8.76 on [-13.3, 8.76]); the trunk's top segment is still the quality expert's."""
    quality = GaussianExpert(*gaussian_data(SHAPE, seed=1), gamma_min=-12.43, gamma_max=8.76)
    likelihood = GaussianExpert(*gaussian_data(SHAPE, seed=2), gamma_min=-13.3, gamma_max=5.0)
    assert -13.3 + 1.0 * (8.76 + 13.3) != 8.76
    sweep = merges((quality, likelihood), etas=(0.1, 0.7))
    shared, _ = trunks.sweep("ancestral", sweep, 10, range(2), SHAPE, ANCESTRAL)
    for label, (_, merged) in sweep.items():
        assert torch.equal(shared[label].x, sample_ancestral(merged, range(2), SHAPE, **ANCESTRAL).x), label

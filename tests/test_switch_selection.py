"""The VLB-optimal merge ("auto") from measured loss curves, and loss profiles measured in shards:
Gaussian experts that are exact on part of the gamma range, smoothing of noisy curves, exact pooling."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from expertmerge.experts import GaussianExpert
from expertmerge.loss_profile import (combine_profiles, in_range, loss_profile_of_data, profile_grid, profile_records,
                                      selection_images)
from expertmerge.merge import PiecewiseExpert
from expertmerge.pipeline import ConfigError, resolve_eta
from expertmerge.switch_selection import BITS, switch_etas, vlb_optimal_switches

from test_loss_profile import SHAPE, V, W, expected_loss, gaussian_images

LIKELIHOOD_RANGE, QUALITY_RANGE = (-13.3, 5.0), (-12.43, 8.764)
CROSSING = -2.0  # where the experts below trade which half of the range they are exact on


def gaussian(variances, gamma_range):
    return GaussianExpert(torch.zeros(SHAPE), torch.diag(variances), *gamma_range)


def exact_below(gamma, gamma_range, below=True):
    """An expert exact for N(0, diag V) on one side of `gamma` and mis-specified (variances W) on the other."""
    exact, wrong = gaussian(V, gamma_range), gaussian(W, gamma_range)
    return PiecewiseExpert([exact, wrong] if below else [wrong, exact], [gamma])


def profile(likelihood, quality, images, gammas):
    """Mean curves and the paired difference's standard error, as `expertmerge loss-profile` records them."""
    losses = {role: loss_profile_of_data(expert, images, gammas, evaluate=in_range(expert, gammas), batch_size=500)
              for role, expert in (("likelihood", likelihood), ("quality", quality))}
    paired = (losses["quality"].numpy(), losses["likelihood"].numpy())
    curves = {role: pd.DataFrame(profile_records(gammas, loss, paired)).set_index("gamma").reindex(gammas)
              for role, loss in losses.items()}
    return (curves["likelihood"]["loss"].to_numpy(), curves["quality"]["loss"].to_numpy(),
            curves["quality"]["difference_standard_error"].to_numpy())


GAMMAS = np.union1d(profile_grid(-13.3, 8.764, 89), [*LIKELIHOOD_RANGE, *QUALITY_RANGE])
FEASIBLE = (QUALITY_RANGE[0], LIKELIHOOD_RANGE[1])  # both experts may serve here (Eq. 15)


def test_experts_exact_on_complementary_parts_switch_where_their_curves_cross():
    likelihood = exact_below(CROSSING, LIKELIHOOD_RANGE, below=True)
    quality = exact_below(CROSSING, QUALITY_RANGE, below=False)
    curves = profile(likelihood, quality, gaussian_images(2000, seed=1), GAMMAS)
    selection = vlb_optimal_switches(GAMMAS, *curves, *FEASIBLE)
    assert len(selection.chosen.switches) == 1
    step = np.diff(GAMMAS).max()
    assert abs(selection.chosen.switches[0] - CROSSING) <= step, selection.chosen
    assert selection.experts() == ["likelihood", "quality"]


@pytest.mark.parametrize("exact_role", ["likelihood", "quality"])
def test_an_expert_exact_everywhere_serves_everywhere_it_may(exact_role):
    """Where the other expert is mis-specified everywhere, the exact one serves the whole feasible range:
    the one switch sits at the range's far end, whatever the noise in the curves near their crossings."""
    variances = {"likelihood": V if exact_role == "likelihood" else W, "quality": V if exact_role == "quality" else W}
    likelihood, quality = gaussian(variances["likelihood"], LIKELIHOOD_RANGE), gaussian(variances["quality"], QUALITY_RANGE)
    curves = profile(likelihood, quality, gaussian_images(2000, seed=2), GAMMAS)
    selection = vlb_optimal_switches(GAMMAS, *curves, *FEASIBLE)
    expected = FEASIBLE[1] if exact_role == "likelihood" else FEASIBLE[0]
    (switch,) = selection.chosen.switches
    # At the lowest noise both curves tend to 1, so there the data cannot tell the experts apart: the switch may
    # only move off the range's end across gammas where the true difference is within the measured noise.
    between = (GAMMAS >= min(switch, expected)) & (GAMMAS <= max(switch, expected))
    true_difference = np.array([expected_loss(V, variances["quality"], g) - expected_loss(V, variances["likelihood"], g)
                                for g in GAMMAS[between]])
    assert np.all(np.abs(true_difference) < 4 * curves[2][between]), (switch, expected)
    assert abs(switch - expected) < 1.0


def noisy_curves(wiggle):
    """The quality expert better above gamma = 0, and a wiggle above gamma = 2 that crosses zero often."""
    gammas = np.linspace(-10, 10, 81)
    likelihood = 0.5 * np.exp(-(gammas + 3) ** 2 / 10) + 0.1
    quality = likelihood + np.where(gammas < 0, 0.05, -0.05) + wiggle * np.sin(7 * gammas) * (gammas > 2)
    return gammas, likelihood, quality


def test_spurious_crossings_within_the_standard_error_are_smoothed_away():
    gammas, likelihood, quality = noisy_curves(0.08)
    sharp = vlb_optimal_switches(gammas, likelihood, quality, np.full(81, 1e-4), -8, 8)
    assert len(sharp.pointwise.switches) == 13 and sharp.chosen == sharp.pointwise  # errors too small to smooth
    smooth = vlb_optimal_switches(gammas, likelihood, quality, np.full(81, 0.02), -8, 8)
    assert smooth.chosen.switches == pytest.approx((-0.125,))  # the real crossing, between grid points -0.25 and 0
    assert 0 < smooth.chosen.excess_bpd <= smooth.chosen.standard_error_bpd
    # Each candidate is the best merge with its number of switches; more switches never cost more.
    counts = [len(c.switches) for c in smooth.candidates]
    assert counts == list(range(1, 14, 2))
    assert all(a.excess_bpd >= b.excess_bpd - 1e-12 for a, b in zip(smooth.candidates, smooth.candidates[1:]))


def test_candidates_are_the_best_merges_by_brute_force():
    """On a small curve, every labelling of its segments by brute force: the dynamic programme's
    merge for each switch count has the lowest expected VLB among those with that count."""
    import itertools

    gammas, likelihood, quality = noisy_curves(0.08)
    selection = vlb_optimal_switches(gammas, likelihood, quality, np.zeros(81), -1, 5)
    segments = np.array([-1, *selection.pointwise.switches, 5])  # pointwise switches are the zero crossings
    segments = np.unique(segments)
    difference = quality - likelihood
    integrals = []
    for a, b in zip(segments[:-1], segments[1:]):  # trapezoids of the interpolant, on the grid and both ends
        nodes = np.union1d([a, b], gammas[(gammas > a) & (gammas < b)])
        values = np.interp(nodes, gammas, difference)
        integrals.append(((values[1:] + values[:-1]) / 2 * np.diff(nodes)).sum() * BITS)
    best = {}
    for labels in itertools.product((0, 1), repeat=len(integrals)):
        count = sum(a != b for a, b in zip((0, *labels), (*labels, 1)))
        cost = sum(w for w, label in zip(integrals, labels) if label)
        best[count] = min(best.get(count, math.inf), cost)
    optimum = min(best.values())
    for candidate in selection.candidates:
        assert candidate.excess_bpd == pytest.approx(best[len(candidate.switches)] - optimum, abs=1e-12)


def test_switches_are_reported_on_the_merged_clock():
    assert switch_etas([-13.3, 8.764], -13.3, 8.764) == pytest.approx([0.0, 1.0])


def test_a_profile_in_shards_pools_to_the_profile_in_one_piece():
    """Means and standard errors (of each curve and of the paired difference) pooled from shards equal
    those of all images at once: no dependence on the shard layout."""
    likelihood, quality = gaussian(V, LIKELIHOOD_RANGE), gaussian(W, QUALITY_RANGE)
    images, gammas = gaussian_images(60, seed=3), GAMMAS[::6]
    seeds = list(range(60))

    def frame(rows):
        losses = {role: loss_profile_of_data(e, images[rows], gammas, seeds=[seeds[r] for r in rows],
                                             evaluate=in_range(e, gammas)) for role, e in
                  (("quality", quality), ("likelihood", likelihood))}
        paired = (losses["quality"].numpy(), losses["likelihood"].numpy())
        return pd.DataFrame([{"role": role, "expert": role, **record} for role in losses
                             for record in profile_records(gammas, losses[role], paired)])

    whole = frame(list(range(60)))
    parts = [frame(list(rows)) for rows in np.array_split(np.arange(60), 4)]
    combined = combine_profiles(parts)
    assert list(combined.columns) == list(whole.columns)
    numbers = ["loss", "standard_error", "difference", "difference_standard_error"]
    assert np.allclose(combined[numbers].to_numpy(), whole[numbers].to_numpy(), rtol=1e-10, atol=1e-14, equal_nan=True)
    assert (combined["images"] == 60).all()
    with pytest.raises(ValueError, match="disagree"):
        combine_profiles([parts[0], parts[1].assign(expert="other")])


def test_the_selection_is_a_fixed_choice_of_the_split():
    chosen = selection_images(50000, 10000, seed=0)
    assert len(chosen) == len(np.unique(chosen)) == 10000 and (np.diff(chosen) > 0).all()
    assert np.array_equal(chosen, selection_images(50000, 10000, seed=0))
    assert not np.array_equal(chosen, selection_images(50000, 10000, seed=1))
    assert np.array_equal(selection_images(7), np.arange(7))
    with pytest.raises(ValueError, match="2 to 7 images"):
        selection_images(7, 8)


def test_the_auto_label_needs_its_switches():
    names = {"quality": "edm", "likelihood": "vdm"}
    with pytest.raises(ConfigError, match="auto"):
        resolve_eta("auto", names, 0.04, 0.83)
    choice = resolve_eta("auto", names, 0.04, 0.83, [0.3, 0.4, 0.6])
    assert (choice.eta, choice.plot_position, choice.baseline) == (0.3, 0.3, None)
    assert choice.record()["switch_etas"] == "0.3 0.4 0.6"


# ----------------------------------------------------------------------------
# Any number of experts (`vlb_optimal_pieces`), on constructed curves whose optimum is known.

LINE = np.linspace(-10.0, 10.0, 401)
THREE = {"vdm": 1 + 0.1 * (LINE + 3), "flow": np.ones_like(LINE), "edm": 1 - 0.1 * (LINE - 4)}  # lowest: vdm, flow, edm
EVERYWHERE = {name: (-10.0, 10.0) for name in THREE}
NO_ERROR = {name: np.zeros_like(LINE) for name in THREE}


def test_auto_over_three_curves_picks_the_lowest_curve_at_each_gamma():
    from expertmerge.switch_selection import vlb_optimal_pieces

    chosen, pointwise, candidates = vlb_optimal_pieces(LINE, THREE, NO_ERROR, EVERYWHERE)
    assert chosen == pointwise and chosen.experts == ("vdm", "flow", "edm")
    assert chosen.switches == pytest.approx((-3.0, 4.0), abs=1e-9) and chosen.excess_bpd == 0
    assert [len(c.experts) for c in candidates] == [1, 2, 3]
    assert candidates[0].experts == ("flow",)  # one expert alone: the lowest integral over the whole range
    narrow = {**EVERYWHERE, "edm": (5.0, 10.0)}  # edm may not serve below 5: flow serves on to there
    assert vlb_optimal_pieces(LINE, THREE, NO_ERROR, narrow)[0].switches == pytest.approx((-3.0, 5.0), abs=1e-9)
    gap = {"vdm": (-10.0, -4.0), "flow": (-2.0, 10.0), "edm": (0.0, 10.0)}
    with pytest.raises(ValueError, match=r"no expert is valid and measured over gamma in \[-4, -3\]"):
        vlb_optimal_pieces(LINE, THREE, NO_ERROR, gap)


def test_auto_over_three_curves_smooths_a_dip_within_its_standard_error():
    from expertmerge.switch_selection import vlb_optimal_pieces

    dip = THREE["flow"] - 2 * np.clip(0.25 - np.abs(LINE - 6.25), 0, None)  # below edm's near 6.25 only
    noisy = {**NO_ERROR, "flow": np.where(np.abs(LINE - 6.25) < 0.5, 0.5, 0.0)}  # uncertain only around the dip
    chosen, pointwise, _ = vlb_optimal_pieces(LINE, {**THREE, "flow": dip}, noisy, EVERYWHERE)
    assert pointwise.experts == ("vdm", "flow", "edm", "flow", "edm") and chosen.experts == ("vdm", "flow", "edm")
    assert 0 < chosen.excess_bpd <= chosen.standard_error_bpd
    exact = vlb_optimal_pieces(LINE, {**THREE, "flow": dip}, NO_ERROR, EVERYWHERE)[0]
    assert exact.experts == pointwise.experts  # with no error, nothing is smoothed away


def test_auto_over_n_experts_finds_the_best_merge_of_each_size_by_brute_force():
    import itertools

    from expertmerge.switch_selection import BITS, _breaks, vlb_optimal_pieces
    from expertmerge.loss_profile import piece_integral

    generator = np.random.default_rng(3)
    grid = np.linspace(-6.0, 6.0, 25)
    curves = {name: 1 + 0.3 * np.cumsum(generator.standard_normal(25)) / 5 for name in "abc"}
    ranges = {name: (-6.0, 6.0) for name in curves}
    _, pointwise, candidates = vlb_optimal_pieces(grid, curves, {n: np.zeros(25) for n in curves}, ranges)
    breaks = _breaks(grid, curves, ranges)
    costs = [{n: piece_integral(grid, c, lo, hi) * BITS for n, c in curves.items()} for lo, hi in zip(breaks[:-1], breaks[1:])]
    best = {}
    for labels in itertools.product("abc", repeat=len(costs)):
        pieces = 1 + sum(a != b for a, b in zip(labels[:-1], labels[1:]))
        best[pieces] = min(best.get(pieces, np.inf), sum(c[n] for c, n in zip(costs, labels)))
    optimum = min(best.values())
    for candidate in candidates:
        assert candidate.excess_bpd == pytest.approx(best[len(candidate.experts)] - optimum, abs=1e-12)
    assert pointwise.excess_bpd == 0 and len(candidates) == len(pointwise.experts)


def test_auto_over_two_experts_agrees_with_the_two_expert_selection():
    from expertmerge.switch_selection import vlb_optimal_pieces

    two = {"likelihood": THREE["vdm"], "quality": THREE["edm"]}
    chosen = vlb_optimal_pieces(LINE, two, {n: np.zeros_like(LINE) for n in two}, {n: (-10.0, 10.0) for n in two})[0]
    selection = vlb_optimal_switches(LINE, two["likelihood"], two["quality"], np.zeros_like(LINE), -10.0, 10.0)
    assert chosen.experts == tuple(selection.experts()) and chosen.switches == pytest.approx(selection.chosen.switches)


def test_an_auto_merge_chooses_on_its_own_experts_range_and_reads_as_a_named_merge():
    """vlb_optimal_merge cuts the profile's grid to its candidates' union (a pair's auto ignores where only a third
    expert is measured) and merge_of_pieces writes the choice as config.yaml's merge: high noise to low, etas of
    that union's clock."""
    from expertmerge.switch_selection import merge_of_pieces, vlb_optimal_merge

    ranges = {"vdm": (-10.0, 6.0), "edm": (-6.0, 10.0)}
    curves = {name: np.where((LINE >= lo) & (LINE <= hi), THREE[name], np.nan) for name, (lo, hi) in ranges.items()}
    wider = np.concatenate([[-12.0], LINE, [12.0]])  # a third expert's grid points beyond the pair's union
    pad = lambda curve: np.concatenate([[np.nan], curve, [np.nan]])  # noqa: E731
    chosen, _, _, clock = vlb_optimal_merge(wider, {n: pad(c) for n, c in curves.items()},
                                            {n: pad(np.zeros_like(LINE)) for n in curves}, ranges)
    assert clock == (-10.0, 10.0) and chosen.experts == ("vdm", "edm")
    (crossing,) = chosen.switches  # vdm's 1 + 0.1 (g + 3) meets edm's 1 - 0.1 (g - 4) at g = 0.5
    assert crossing == pytest.approx(0.5, abs=1e-9)
    assert merge_of_pieces(chosen, clock) == {"experts": ["edm", "vdm"], "switches": [pytest.approx(0.525, abs=1e-9)]}
    three = vlb_optimal_merge(LINE, THREE, NO_ERROR, EVERYWHERE)
    assert merge_of_pieces(three[0], three[3]) == {"experts": ["edm", "flow", "vdm"],
                                                   "switches": [pytest.approx(0.7), pytest.approx(0.35)]}

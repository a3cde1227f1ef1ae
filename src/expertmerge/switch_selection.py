"""The VLB-optimal merge ("auto"): which expert serves each noise level, chosen from their loss curves.

A merge's VLB is prior + reconstruction + 1/(2 ln 2) int L dgamma (Eq. 6-7), with each expert's L on
the pieces it serves; the end terms do not depend on the experts. So where both experts may serve
(the feasible range of Eq. 15, [gamma(eta_min), gamma(eta_max)]), serving gamma by the quality expert
costs d(gamma) = L_quality(gamma) - L_likelihood(gamma) against the likelihood expert, and the pointwise
optimum lets the quality expert serve exactly where d < 0. Below the range only the likelihood expert
may serve, above it only the quality expert.

The measured d is noisy, and each sign change of its mean would be a switch. Smoothing: among the
merges with 1, 3, 5, ... switches (each the best with that many), take the fewest whose expected VLB
exceeds the pointwise optimum's by at most one standard error of that excess. The excess is
1/(2 ln 2) times the integral of |d| over where the two merges differ; its standard error is bounded
by the same integral of d's standard error (the errors at different gammas come from the same images,
so they are not independent; the triangle inequality makes the bound hold whatever their correlation,
and it errs towards fewer switches). Optimal switches lie where d crosses zero or at the range's ends
(moving a switch changes the VLB by +-d there), so the candidates are built from those points.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .loss_profile import piece_integral
from .noise import linear_gamma_time

BITS = 1 / (2 * math.log(2))  # bits/dim of the VLB per unit of int L dgamma (Eq. 7)


@dataclass(frozen=True)
class Candidate:
    switches: tuple[float, ...]  # switch gammas, low to high noise; the likelihood expert serves below the first
    excess_bpd: float            # expected VLB above the pointwise optimum's (bits/dim, >= 0)
    standard_error_bpd: float    # bound on the standard error of that excess


@dataclass(frozen=True)
class Selection:
    chosen: Candidate
    pointwise: Candidate              # the pointwise optimum (excess 0)
    candidates: list[Candidate] = field(default_factory=list)  # the best merge for each odd switch count

    def experts(self) -> list[str]:
        """The roles serving each piece, from low to high noise: likelihood, quality, likelihood, ..."""
        return [("likelihood", "quality")[k % 2] for k in range(len(self.chosen.switches) + 1)]


def _segment_integrals(breaks, gammas, values) -> np.ndarray:
    """int of the piecewise-linear interpolant of `values` over each [breaks[j], breaks[j+1]]."""
    return np.array([piece_integral(gammas, values, lo, hi) for lo, hi in zip(breaks[:-1], breaks[1:])])


def _zeros(gammas, difference) -> list[float]:
    """Where the piecewise-linear interpolant of `difference` crosses zero (strict sign changes, or a zero
    grid point between values of opposite sign)."""
    found, signs = [], np.sign(difference)
    nonzero = np.flatnonzero(signs)
    for a, b in zip(nonzero[:-1], nonzero[1:]):
        if signs[a] != signs[b]:
            if b == a + 1:
                found.append(float(gammas[a] + difference[a] / (difference[a] - difference[b]) * (gammas[b] - gammas[a])))
            else:  # exact zeros in between: switch at the first of them
                found.append(float(gammas[a + 1]))
    return found


def _best_labelling(weights, switches: int) -> tuple[float, list[int]] | None:
    """The cheapest labelling of segments (1 = quality serves, cost weights[j]) whose sequence
    [likelihood, labels..., quality] changes expert exactly `switches` times; None if impossible."""
    count = len(weights)
    # best[label][changes] = (cost, labels) over the segments so far
    best = {0: {0: (0.0, [])}, 1: {}}
    for j in range(count):
        step = {0: {}, 1: {}}
        for previous, table in best.items():
            for changes, (cost, labels) in table.items():
                for label in (0, 1):
                    total = changes + (label != previous)
                    if total > switches:
                        continue
                    value = (cost + (weights[j] if label else 0.0), labels + [label])
                    if total not in step[label] or value[0] < step[label][total][0]:
                        step[label][total] = value
        best = step
    finals = [(cost, labels) for label, table in best.items() for changes, (cost, labels) in table.items()
              if changes + (label != 1) == switches]
    return min(finals, key=lambda item: item[0]) if finals else None


def vlb_optimal_switches(gammas, likelihood, quality, difference_error, gamma_lo: float, gamma_hi: float) -> Selection:
    """The VLB-optimal merge of two experts from their mean loss curves on `gammas` (NaN where unmeasured)
    and the standard error of their paired difference L_quality - L_likelihood; switches may lie in
    [gamma_lo, gamma_hi] (the feasible range, where both curves are measured). See the module docstring."""
    gammas = np.asarray(gammas, dtype=np.float64)
    likelihood, quality, difference_error = (np.asarray(a, dtype=np.float64) for a in (likelihood, quality, difference_error))
    inside = (gammas >= gamma_lo - 1e-9) & (gammas <= gamma_hi + 1e-9)
    both = inside & np.isfinite(likelihood) & np.isfinite(quality)
    if not (both.any() and gammas[both].min() <= gamma_lo + 1e-9 and gammas[both].max() >= gamma_hi - 1e-9):
        raise ValueError(f"both curves must be measured over the feasible range [{gamma_lo:.4g}, {gamma_hi:.4g}] "
                         f"(a loss profile's grid holds both experts' range ends)")
    grid, difference = gammas[both], (quality - likelihood)[both]
    error = np.nan_to_num(difference_error[both], nan=0.0)
    breaks = np.array([grid[0], *_zeros(grid, difference), grid[-1]])
    weights = _segment_integrals(breaks, grid, difference) * BITS
    errors = _segment_integrals(breaks, grid, error) * BITS

    def switches_and_cost(labels) -> tuple[tuple[float, ...], float]:
        edges = [0, *labels, 1]  # the likelihood expert below the range, the quality expert above it
        switches = tuple(float(breaks[j]) for j in range(len(edges) - 1) if edges[j] != edges[j + 1])
        return switches, float(sum(w for w, label in zip(weights, labels) if label))

    pointwise_labels = [int(w < 0) for w in weights]
    pointwise_switches, optimum = switches_and_cost(pointwise_labels)
    candidates = []
    for count in range(1, len(pointwise_switches) + 1, 2):
        found = _best_labelling(weights, count)
        if found is None:
            continue
        switches, cost = switches_and_cost(found[1])
        differ = sum(e for e, a, b in zip(errors, found[1], pointwise_labels) if a != b)
        candidates.append(Candidate(switches, max(cost - optimum, 0.0), float(differ)))
    pointwise = Candidate(pointwise_switches, 0.0, 0.0)
    chosen = next((c for c in candidates if c.excess_bpd <= c.standard_error_bpd), pointwise)
    return Selection(chosen, pointwise, candidates)


def switch_etas(switches, gamma_0: float, gamma_1: float) -> list[float]:
    """Switch gammas as etas on the merged range's linear clock (Eq. 14)."""
    return [linear_gamma_time(gamma, gamma_0, gamma_1) for gamma in switches]


# ---------------------------------------------------------------------------------------------
# Any number of experts: at each gamma the expert with the lowest L(gamma) among those valid there serves,
# smoothed to the fewest pieces within one standard error of that pointwise optimum, as for two experts.

@dataclass(frozen=True)
class Pieces:
    experts: tuple[str, ...]     # the serving experts, from low to high noise (adjacent ones differ)
    switches: tuple[float, ...]  # the gammas between them
    excess_bpd: float            # expected VLB above the pointwise optimum's (bits/dim, >= 0)
    standard_error_bpd: float    # bound on the standard error of that excess


def _breaks(grid, curves: dict, ranges: dict) -> np.ndarray:
    """The grid's ends, every expert's range ends inside it and every crossing of two experts' curves where
    both are measured: between two breaks, which expert is lowest (and which may serve) does not change."""
    points = [grid[0], grid[-1], *(end for lo, hi in ranges.values() for end in (lo, hi) if grid[0] < end < grid[-1])]
    names = list(curves)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            both = np.isfinite(curves[a]) & np.isfinite(curves[b])
            points += _zeros(grid[both], (curves[a] - curves[b])[both]) if both.sum() > 1 else []
    return np.unique(np.round(points, 12))


def vlb_optimal_pieces(gammas, curves: dict, errors: dict, ranges: dict) -> tuple[Pieces, Pieces, list[Pieces]]:
    """The VLB-optimal merge of any number of experts from their mean loss curves on `gammas` (NaN where
    unmeasured), the standard errors of those means, and each expert's valid (gamma_lo, gamma_hi). Every gamma
    of the merged range must be served by an expert valid and measured there. Returns (chosen, pointwise
    optimum, the best merge for each number of pieces up to the pointwise one's). The excess's standard error
    is bounded by the integral of se_a + se_b where a merge differs from the optimum (a bound whatever the
    curves' correlation, erring towards fewer pieces; `vlb_optimal_switches` uses the paired error instead)."""
    grid = np.asarray(gammas, dtype=np.float64)
    curves = {name: np.asarray(curve, dtype=np.float64) for name, curve in curves.items()}
    errors = {name: np.nan_to_num(np.asarray(errors[name], dtype=np.float64), nan=0.0) for name in curves}
    breaks = _breaks(grid, curves, ranges)
    options = []  # per segment: {expert: (cost, error)} of the experts that may serve all of it
    for lo, hi in zip(breaks[:-1], breaks[1:]):
        inside = (grid >= lo - 1e-9) & (grid <= hi + 1e-9)
        options.append({name: (piece_integral(grid, curve, lo, hi) * BITS, piece_integral(grid, errors[name], lo, hi) * BITS)
                        for name, curve in curves.items() if ranges[name][0] - 1e-9 <= lo and hi <= ranges[name][1] + 1e-9
                        and np.isfinite(curve[inside]).all()})
        if not options[-1]:
            raise ValueError(f"no expert is valid and measured over gamma in [{lo:.4g}, {hi:.4g}]")
    pointwise_labels = [min(segment, key=lambda name: segment[name][0]) for segment in options]
    optimum = sum(segment[name][0] for segment, name in zip(options, pointwise_labels))

    def as_pieces(labels) -> Pieces:
        cost = sum(segment[name][0] for segment, name in zip(options, labels))
        differ = sum(segment[a][1] + segment[b][1] for segment, a, b in zip(options, labels, pointwise_labels) if a != b)
        changes = [j for j in range(1, len(labels)) if labels[j] != labels[j - 1]]
        return Pieces(tuple(labels[j] for j in [0, *changes]), tuple(float(breaks[j]) for j in changes),
                      max(cost - optimum, 0.0), float(differ))

    pointwise = as_pieces(pointwise_labels)
    most = len(pointwise.experts)
    # best[(expert, pieces)] = (cost, labels) over the segments so far
    best = {(name, 1): (cost, [name]) for name, (cost, _) in options[0].items()}
    for segment in options[1:]:
        step = {}
        for (previous, count), (cost, labels) in best.items():
            for name, (extra, _) in segment.items():
                key = (name, count + (name != previous))
                if key[1] <= most and (key not in step or cost + extra < step[key][0]):
                    step[key] = (cost + extra, labels + [name])
        best = step
    candidates = [as_pieces(min((v for (_, c), v in best.items() if c == count), key=lambda v: v[0])[1])
                  for count in range(1, most + 1) if any(c == count for _, c in best)]
    chosen = next((c for c in candidates if c.excess_bpd <= c.standard_error_bpd), pointwise)
    return chosen, pointwise, candidates


def vlb_optimal_merge(gammas, curves: dict, errors: dict, ranges: dict) -> tuple[Pieces, Pieces, list[Pieces], tuple]:
    """`vlb_optimal_pieces` over the experts of `curves` on their own merged range (the grid cut to the union of
    their `ranges`): (chosen, pointwise, candidates, (gamma_0, gamma_1)), the last the clock of the merge."""
    grid = np.asarray(gammas, dtype=np.float64)
    clock = (min(lo for lo, _ in ranges.values()), max(hi for _, hi in ranges.values()))
    inside = (grid >= clock[0] - 1e-9) & (grid <= clock[1] + 1e-9)
    cut = {name: np.asarray(curve, dtype=np.float64)[inside] for name, curve in curves.items()}
    chosen, pointwise, candidates = vlb_optimal_pieces(grid[inside], cut, {name: np.asarray(errors[name])[inside]
                                                                           for name in curves}, ranges)
    return chosen, pointwise, candidates, clock


def merge_of_pieces(pieces: Pieces, clock: tuple[float, float]) -> dict:
    """A piecewise choice as a named merge (config.yaml's form): experts from high noise to low, hard switches at
    the etas of `clock` where they hand over."""
    return {"experts": list(pieces.experts[::-1]), "switches": switch_etas(pieces.switches, *clock)[::-1]}

"""Named merges of any number of experts (issue 24): what config.yaml's `merges` describe.

A merge lists its experts from high noise to low, as a sampler meets them, and one switch between each two:
a hard switch at eta (a number), or a blend over a window [eta_a, eta_b] (`{"blend": [eta_a, eta_b]}`), where
the denoiser moves linearly in gamma from the lower expert's to the higher one's. Positions are on the merged
clock of all the merge's experts (Eq. 14). A merge is checked before any work: each expert must be valid on
every level it serves, a blend's two experts on the whole window (Eq. 15, for each pair of neighbours).
This module imports no torch: the workflow checks config.yaml's merges with it while it plans;
`merge_specs.build_merge` builds the denoiser. An `auto` merge names only its candidate experts: `expertmerge
auto-merge` chooses its pieces from their loss profiles.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from .noise import feasible_etas


@dataclass(frozen=True)
class Switch:
    """Where two neighbouring experts hand over, on the merged clock: a hard switch when low == high."""
    low: float
    high: float

    def describe(self) -> str:
        return f"{self.low:g}" if self.low == self.high else f"a blend over [{self.low:g}, {self.high:g}]"


def parse_switch(value) -> Switch:
    """A number (a hard switch at eta) or {"blend": [eta_a, eta_b]} with eta_a < eta_b, each in [0, 1]."""
    if isinstance(value, dict) and set(value) == {"blend"}:
        window = value["blend"]
        if not (isinstance(window, (list, tuple)) and len(window) == 2):
            raise ValueError(f"a blend is {{blend: [eta_a, eta_b]}}, got {value!r}")
        low, high = (_eta(v) for v in window)
        if not low < high:
            raise ValueError(f"a blend window [eta_a, eta_b] needs eta_a < eta_b, got {list(window)}")
        return Switch(low, high)
    eta = _eta(value)
    return Switch(eta, eta)


def _eta(value) -> float:
    if isinstance(value, bool):
        value = math.nan
    try:
        eta = float(value)
    except (TypeError, ValueError):
        eta = math.nan
    if not 0 <= eta <= 1:  # also refuses NaN
        raise ValueError(f"a switch level is a number in [0, 1] or {{blend: [eta_a, eta_b]}}, got {value!r}")
    return eta


def check_merge(names: Sequence[str], switches: Sequence[Switch], ranges: dict) -> None:
    """Refuse, in one line, a merge whose experts (`names`, high noise to low, with gamma `ranges` by name) do not
    cover the levels they serve, or whose switches do not descend from high noise to low without overlapping."""
    names = list(names)
    if len(names) < 2:
        raise ValueError(f"a merge needs at least two experts, got {names}")
    if len(switches) != len(names) - 1:
        raise ValueError(f"a merge of {len(names)} experts ({', '.join(names)}) needs {len(names) - 1} switches, "
                         f"got {len(switches)}")
    for above, below in zip(switches[:-1], switches[1:]):
        if not below.high <= above.low:
            raise ValueError(f"switches run from high noise to low and may not overlap: {below.describe()} follows "
                             f"{above.describe()}")
    low_to_high = names[::-1]
    feasible = feasible_etas([ranges[name] for name in low_to_high])  # each neighbouring pair, low to high
    for k, (switch, (lo, hi)) in enumerate(zip(switches[::-1], feasible)):
        if not (lo - 1e-12 <= switch.low and switch.high <= hi + 1e-12):
            lower, upper = low_to_high[k], low_to_high[k + 1]
            raise ValueError(f"the switch from {upper} to {lower} at {switch.describe()} leaves the levels where both "
                             f"are valid, eta in [{lo:.4f}, {hi:.4f}] (Eq. 15; {upper}: gamma {_range(ranges[upper])}, "
                             f"{lower}: gamma {_range(ranges[lower])})")


def _range(bounds) -> str:
    return f"[{bounds[0]:.4g}, {bounds[1]:.4g}]"


def describe_merge(merge: dict) -> str:
    """A config.yaml merge in words: 'auto over EDM, FLOW, VDM' or 'EDM > FLOW > VDM at 0.7, 0.3'."""
    if "auto" in merge:
        return "auto over " + ", ".join(name.upper() for name in merge["auto"])
    switches = [parse_switch(value).describe() for value in merge["switches"]]
    return " > ".join(name.upper() for name in merge["experts"]) + " at " + ", ".join(switches)


def merge_experts(merge: dict) -> list[str]:
    """The experts a config.yaml merge may use: its `experts`, or the candidates of an `auto` merge."""
    return [str(name) for name in (merge["auto"] if "auto" in merge else merge["experts"])]


def check_config_merge(merge: dict, expert_ranges: dict) -> None:
    """A merge as config.yaml gives it ({experts: [...], switches: [...]}, or {auto: [...]}: the VLB-optimal merge of
    those experts, chosen from their loss profiles), against the experiment's experts and their gamma ranges
    (`expert_ranges`, by name)."""
    names = merge_experts(merge)
    unknown = [name for name in names if name not in expert_ranges]
    if unknown:
        raise ValueError(f"names the expert {unknown[0]!r}, which the experiment does not have "
                         f"(its experts: {', '.join(expert_ranges)})")
    if len(set(names)) != len(names):
        raise ValueError(f"lists an expert twice: {names}")
    if "auto" not in merge:
        check_merge(names, [parse_switch(value) for value in merge["switches"]], expert_ranges)
        return
    if len(names) < 2:
        raise ValueError(f"an auto merge chooses among at least two experts, got {names}")
    covered = sorted(expert_ranges[name] for name in names)
    reach = covered[0][1]
    for lo, hi in covered[1:]:
        if lo > reach:
            raise ValueError(f"no expert of {names} serves gamma in ({reach:.4g}, {lo:.4g}): an auto merge needs their "
                             "ranges to leave no gap")
        reach = max(reach, hi)

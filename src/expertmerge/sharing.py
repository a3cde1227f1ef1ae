"""Which jobs of an eta sweep share a trunk (issue 23), decided from config.yaml alone while the workflow plans.

A merge on the merged clock leaves the shared trunk (`expertmerge.trunks`) at an anchor k/grid: sampling
runs down from the prior at k = grid, the ODE NLL up from the data at k = 0. The trunk job that ends at anchor k
starts from the one at k + 1 (down) or k - 1 (up), whatever etas are configured, so adding an eta changes no
other job's input. This module must not import torch: the workflow imports it while it plans.
"""
from __future__ import annotations

import math

from . import paths
from .pipeline import RANGE_LABELS, experiment_eta_range, named_label

DIRECTIONS = {"ancestral": "down", "ode": "down", "nll": "up"}  # the paths that share a trunk, and which way each runs


def anchor_index(direction: str, eta: float, grid: int) -> int:
    """k of the anchor k/grid where a merge switching at `eta` leaves the trunk: the nearest grid level at or
    above eta going down (sampling), at or below it going up (NLL); k/grid is compared as the float it is, so the
    trunk never runs a level that the merge gives to its other expert."""
    k = math.ceil(eta * grid - 1e-9) if direction == "down" else math.floor(eta * grid + 1e-9)
    if direction == "down" and k / grid < eta:
        k += 1
    if direction == "up" and k / grid > eta:
        k -= 1
    return min(max(k, 0), grid)


def trunk_end(direction: str, grid: int) -> int:
    """The anchor index where a trunk starts: the prior at the top (sampling), the data at the bottom (NLL)."""
    return grid if direction == "down" else 0


def level_name(k: int, grid: int) -> str:
    """An anchor's level as its file names it: k/grid as Python prints the float (3/10 -> "0.3")."""
    return repr(k / grid)


def share_settings(experiment: dict, path: str) -> tuple[bool, int]:
    """(share, grid) of a path: sampling.share/share_grid for the samplers, nll.share/share_grid for the NLL."""
    section = experiment["nll" if path == "nll" else "sampling"]
    return bool(section.get("share", True)), int(section.get("share_grid", 10))


def switch_level(experiment: dict, label) -> float | None:
    """The switch eta of a merge label known while planning (a number, eta_min, eta_max); None for a baseline and
    for "auto", whose switches a job chooses later (it runs on its own)."""
    label = str(label)
    if named_label(experiment, label):
        return None  # auto and named merges run on their own (a named merge may start with another expert)
    if label in RANGE_LABELS:
        return experiment_eta_range(experiment)[RANGE_LABELS.index(label)]
    return float(label)


def tail_anchor(experiment: dict, path: str, label) -> int | None:
    """The anchor a merge's job for `path` starts from, or None when it runs on its own: sharing off, a path that
    shares nothing (Heun), a baseline, auto, or an anchor at the trunk's own start."""
    if path not in DIRECTIONS:
        return None
    share, grid = share_settings(experiment, path)
    eta = switch_level(experiment, label)
    if not share or eta is None:
        return None
    k = anchor_index(DIRECTIONS[path], eta, grid)
    return None if k == trunk_end(DIRECTIONS[path], grid) else k


def trunk_state_path(experiment_name: str, path: str, k: int, grid: int, shard) -> str:
    return paths.TRUNK_STATE.format(experiment=experiment_name, path=path, level=level_name(k, grid), shard=shard)


def anchor_of_level(experiment: dict, path: str, level: str) -> int:
    """The anchor index a trunk file's level names, refused unless it lies on the path's grid."""
    _, grid = share_settings(experiment, path)
    k = round(float(level) * grid)
    if not (0 <= k <= grid and level_name(k, grid) == level and k != trunk_end(DIRECTIONS[path], grid)):
        raise ValueError(f"{level!r} is not an anchor of the {path} trunk's grid (k/{grid}, k = 1..{grid - 1})")
    return k


def previous_trunk_state(experiment: dict, experiment_name: str, path: str, level: str, shard) -> str | None:
    """The trunk state the segment ending at `level` starts from; None for the first segment."""
    _, grid = share_settings(experiment, path)
    k = anchor_of_level(experiment, path, level)
    parent = k + 1 if DIRECTIONS[path] == "down" else k - 1
    return None if parent == trunk_end(DIRECTIONS[path], grid) else trunk_state_path(experiment_name, path, parent,
                                                                                      grid, shard)


def trunk_anchors(experiment: dict, path: str) -> list[int]:
    """Every anchor a path's trunk must reach for the configured etas, in the order the trunk runs."""
    tails = [k for k in (tail_anchor(experiment, path, label) for label in experiment["etas"]) if k is not None]
    if not tails:
        return []
    _, grid = share_settings(experiment, path)
    if DIRECTIONS[path] == "down":
        return list(range(grid - 1, min(tails) - 1, -1))
    return list(range(1, max(tails) + 1))

"""The diagnostics' intermediate files, checked when read: a loss profile (`expertmerge loss-profile`, one
shard or combined by `combine-profiles`) and an auto-switch file (`expertmerge auto-switch`, the merge that
eta "auto" runs). A file edited by hand or cut short would otherwise be believed: a reversed gamma column
or a NaN loss gives bogus switches, a switches file naming one expert on both sides gives samples labelled
"auto" that are that expert alone. Each problem is one ValueError naming the file, before any work.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from .noise import feasible_etas, linear_gamma

ROLES = ("likelihood", "quality")  # the eta grid's pair, low to high noise, as the paper's merge
OTHER_ROLE = "other"  # the role column of an expert beyond the pair, which serves in named merges only
PROFILE_COLUMNS = ("role", "expert", "gamma", "loss", "standard_error", "images", "difference",
                   "difference_standard_error", "gamma_min", "gamma_max", "eta_min", "eta_max", "gamma_0", "gamma_1")
PROFILE_CONSTANTS = ("eta_min", "eta_max", "gamma_0", "gamma_1")
SLACK = 1e-9  # gammas and etas written in floating point may miss a range end by rounding


# ----------------------------------------------------------------------------
# Loss profiles.


def read_loss_profile(path, whole: bool = True) -> pd.DataFrame:
    """A loss-profile CSV, checked: its columns; per expert one name, gammas finite and strictly increasing
    inside the expert's range, losses finite and >= 0, standard errors finite and >= 0 (NaN only for one
    image), image counts positive integers; the range columns one consistent set. `whole`: a complete
    profile, not one shard of several (those are combined first)."""
    try:
        frame = pd.read_csv(path, dtype={"role": str, "expert": str})
    except FileNotFoundError:
        raise
    except ValueError as error:  # pandas' parse errors (and an empty file) are ValueErrors
        raise ValueError(f"{path} is not a loss-profile CSV: {error}") from None
    missing = [column for column in PROFILE_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"{path} is not a loss profile: it lacks column(s) {missing}")
    roles = sorted(set(frame["role"]) - {OTHER_ROLE})
    if roles != sorted(ROLES):
        raise ValueError(f"{path}: a loss profile holds rows of the roles {list(ROLES)} (one curve each) and of "
                         f"experts of role {OTHER_ROLE!r}, got {sorted(set(frame['role']))}")
    for role in ROLES:
        _check_curve(path, f"the {role} expert", frame[frame["role"] == role])
    others = frame[frame["role"] == OTHER_ROLE]
    clash = sorted(set(others["expert"]) & set(frame.loc[frame["role"] != OTHER_ROLE, "expert"]))
    if clash:
        raise ValueError(f"{path}: the expert {clash[0]!r} has rows of two roles; a profile has one curve per expert")
    for name, rows in others.groupby("expert", sort=False):
        _check_curve(path, f"the expert {name}", rows)
    _check_ranges(path, frame)
    _check_shard_columns(path, frame, whole)
    return frame


def profile_experts(profile: pd.DataFrame) -> tuple[dict, dict]:
    """({role: expert name}, {role: (gamma_min, gamma_max)}) of the eta grid's pair in a loss profile read by
    `read_loss_profile`."""
    rows = profile[profile["role"].isin(ROLES)].drop_duplicates("role").set_index("role")
    ranges = {role: (float(row.gamma_min), float(row.gamma_max)) for role, row in rows.iterrows()}
    return rows["expert"].to_dict(), ranges


def expert_ranges(profile: pd.DataFrame) -> dict:
    """{expert name: (gamma_min, gamma_max)} of every expert in a loss profile, the pair's and the others'."""
    rows = profile.drop_duplicates("expert").set_index("expert")
    return {name: (float(row.gamma_min), float(row.gamma_max)) for name, row in rows.iterrows()}


def _numbers(path, rows: pd.DataFrame, column: str, what: str, nan_allowed=None) -> np.ndarray:
    """`column` of `rows` as floats, refused unless finite (NaN allowed where `nan_allowed` is True)."""
    values = pd.to_numeric(rows[column], errors="coerce").to_numpy(dtype=float)
    allowed = np.zeros(len(values), bool) if nan_allowed is None else np.asarray(nan_allowed, bool)
    bad = ~np.isfinite(values) & ~(np.isnan(values) & allowed)
    if bad.any():
        row = rows.index[np.flatnonzero(bad)[0]]
        raise ValueError(f"{path}: {column} of {what} must be finite numbers, but row {row + 1} holds "
                         f"{rows[column].loc[row]}")
    return values


def _check_curve(path, what: str, rows: pd.DataFrame) -> None:
    experts = rows["expert"].unique()
    if len(experts) != 1:
        raise ValueError(f"{path}: the rows of {what} name {len(experts)} experts {list(experts)}; a profile has one")
    images = _numbers(path, rows, "images", what)
    if not ((images >= 1) & (images == np.round(images))).all():
        raise ValueError(f"{path}: images of {what} must be positive whole counts, got {sorted(set(images))[:3]}")
    gammas = _numbers(path, rows, "gamma", what)
    order = np.flatnonzero(np.diff(gammas) <= 0)
    if len(order):
        raise ValueError(f"{path}: gamma of {what} must increase strictly, but row {rows.index[order[0] + 1] + 1} "
                         f"({gammas[order[0] + 1]:.6g}) follows {gammas[order[0]]:.6g}")
    losses = _numbers(path, rows, "loss", what)
    if (losses < 0).any():
        raise ValueError(f"{path}: loss of {what} is a mean squared error, >= 0, but holds {losses.min():.6g}")
    one_image = images == 1  # a standard error needs two images: a one-image shard has none
    errors = _numbers(path, rows, "standard_error", what, nan_allowed=one_image)
    differences = _numbers(path, rows, "difference", what, nan_allowed=np.ones(len(rows), bool))  # NaN: unpaired
    difference_errors = _numbers(path, rows, "difference_standard_error", what,
                                 nan_allowed=one_image | np.isnan(differences))
    for name, values in (("standard_error", errors), ("difference_standard_error", difference_errors)):
        if (values < 0).any():
            raise ValueError(f"{path}: {name} of {what} must be >= 0, but holds {np.nanmin(values):.6g}")
    lo, hi = (_constant(path, rows, column, what) for column in ("gamma_min", "gamma_max"))
    if not lo < hi:
        raise ValueError(f"{path}: the gamma range of {what} must have gamma_min < gamma_max, got [{lo}, {hi}]")
    if gammas[0] < lo - SLACK or gammas[-1] > hi + SLACK:
        raise ValueError(f"{path}: {what} is measured on gamma [{gammas[0]:.6g}, {gammas[-1]:.6g}], outside its "
                         f"range [{lo:.6g}, {hi:.6g}]")


def _constant(path, rows: pd.DataFrame, column: str, what: str = "the profile") -> float:
    values = _numbers(path, rows, column, what)
    if len(set(values)) != 1:
        raise ValueError(f"{path}: {column} of {what} must be one value, got {sorted(set(values))[:3]}")
    return float(values[0])


def _check_ranges(path, frame: pd.DataFrame) -> None:
    """The profile's merged range and feasible etas are those of its pair's ranges (Eq. 14-15)."""
    written = {column: _constant(path, frame, column) for column in PROFILE_CONSTANTS}
    ranges = [tuple(frame.loc[frame["role"] == role, ["gamma_min", "gamma_max"]].iloc[0]) for role in ROLES]
    try:
        (eta_min, eta_max), = feasible_etas(ranges)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    expected = {"eta_min": eta_min, "eta_max": eta_max, "gamma_0": min(r[0] for r in ranges),
                "gamma_1": max(r[1] for r in ranges)}
    wrong = [f"{column} {written[column]:.6g} (the ranges give {value:.6g})" for column, value in expected.items()
             if abs(written[column] - value) > 1e-6]
    if wrong:
        raise ValueError(f"{path}: the range columns disagree with the experts' gamma ranges: {', '.join(wrong)}")


def _check_shard_columns(path, frame: pd.DataFrame, whole: bool) -> None:
    if not {"shard", "shards"} <= set(frame.columns):
        return  # written before profiles recorded their shard: nothing to check
    shard, shards = (_constant(path, frame, column) for column in ("shard", "shards"))
    if not (shards >= 1 and shard == int(shard) and shards == int(shards) and 0 <= shard < shards):
        raise ValueError(f"{path}: shard {shard:g} of {shards:g} is not a shard (0 <= shard < shards, whole numbers)")
    if whole and shards != 1:
        raise ValueError(f"{path} is shard {int(shard)} of {int(shards)} of a loss profile; combine the shards "
                         "with `expertmerge combine-profiles` first")


# ----------------------------------------------------------------------------
# Auto-switch files.

def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_name(value) -> bool:
    return isinstance(value, str)


# An auto-switch file's keys that a merge needs: (what the value must be, the test).
SWITCH_KEYS = {
    "experts": ("a list of roles", lambda v: isinstance(v, list) and all(map(_is_name, v))),
    "switch_etas": ("a list of numbers", lambda v: isinstance(v, list) and all(map(_is_number, v))),
    "switch_gammas": ("a list of numbers", lambda v: isinstance(v, list) and all(map(_is_number, v))),
    "names": ("an object of expert names", lambda v: isinstance(v, dict) and all(map(_is_name, v.values()))),
    "gamma_0": ("a number", _is_number),
    "gamma_1": ("a number", _is_number),
}


def read_switches(path, names: dict | None = None, ranges: dict | None = None) -> tuple[list[str], list[float]]:
    """(roles serving each piece from low to high noise, switch etas) of an auto-switch JSON, checked: its keys
    and types; neighbouring pieces served by different experts; switches finite, strictly increasing, in
    [0, 1] and matching their gammas. Given the experts' `names` ({role: name}) and gamma `ranges`
    ({role: (gamma_min, gamma_max)}), the file must be theirs and each switch inside both neighbours' ranges."""
    chosen = _read_json(path)
    roles, etas, gammas = chosen["experts"], chosen["switch_etas"], chosen["switch_gammas"]
    gamma_0, gamma_1 = float(chosen["gamma_0"]), float(chosen["gamma_1"])
    _check_pieces(path, roles, etas, gammas)
    _check_levels(path, etas, gammas, gamma_0, gamma_1)
    if names is not None and any(chosen["names"].get(role) != names[role] for role in ROLES):
        raise ValueError(f"{path} was chosen for the experts {chosen['names']}, not for {dict(names)}")
    if ranges is not None:
        _check_switches_in_ranges(path, roles, gammas, gamma_0, gamma_1, ranges)
    return list(roles), [float(eta) for eta in etas]


def _check_pieces(path, roles, etas, gammas) -> None:
    """One known role per piece, one piece more than switches, and another expert after each switch."""
    if not (len(roles) == len(etas) + 1 == len(gammas) + 1 >= 2 and set(roles) <= set(ROLES)):
        raise ValueError(f"{path}: an auto-switch file lists one role ({' or '.join(ROLES)}) per piece, one piece "
                         f"more than switches, at least one switch; got experts {roles} and switch_etas {etas}")
    same = [k for k in range(len(etas)) if roles[k] == roles[k + 1]]
    if same:
        raise ValueError(f"{path}: switch {same[0]} has the {roles[same[0]]} expert on both sides; a merge changes "
                         f"expert at each switch (experts {roles})")


def _check_levels(path, etas, gammas, gamma_0: float, gamma_1: float) -> None:
    """Switches finite and strictly increasing on [gamma_0, gamma_1], each eta the clock of its gamma (Eq. 14)."""
    if not (math.isfinite(gamma_0) and math.isfinite(gamma_1) and gamma_0 < gamma_1):
        raise ValueError(f"{path}: gamma_0 < gamma_1 must be finite, got [{gamma_0}, {gamma_1}]")
    _check_increasing(path, "switch_etas", etas, 0.0, 1.0)
    _check_increasing(path, "switch_gammas", gammas, gamma_0, gamma_1)
    for eta, gamma in zip(etas, gammas):
        if abs(linear_gamma(eta, gamma_0, gamma_1) - gamma) > 1e-6:
            raise ValueError(f"{path}: switch eta {eta} is gamma {linear_gamma(eta, gamma_0, gamma_1):.6g} on "
                             f"[gamma_0, gamma_1] = [{gamma_0}, {gamma_1}], but switch_gammas says {gamma}")


def _read_json(path) -> dict:
    try:
        chosen = json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not an auto-switch JSON file: {error}") from None
    if not isinstance(chosen, dict):
        raise ValueError(f"{path} is not an auto-switch file: it holds a {type(chosen).__name__}, not an object")
    missing = [key for key in SWITCH_KEYS if key not in chosen]
    if missing:
        raise ValueError(f"{path} is not an auto-switch file: it lacks the key(s) {missing}")
    for key, (expected, test) in SWITCH_KEYS.items():
        if not test(chosen[key]):
            raise ValueError(f"{path}: {key} must be {expected}, got {chosen[key]!r}")
    return chosen


def _check_increasing(path, key: str, values, lo: float, hi: float) -> None:
    values = np.asarray(values, dtype=float)
    if not (np.isfinite(values).all() and (np.diff(values) > 0).all()
            and values.min() >= lo - SLACK and values.max() <= hi + SLACK):
        raise ValueError(f"{path}: {key} must be finite, strictly increasing and in [{lo:.6g}, {hi:.6g}], "
                         f"got {values.tolist()}")


def _check_switches_in_ranges(path, roles, gammas, gamma_0, gamma_1, ranges: dict) -> None:
    """The file's merged range is the experts', and both experts at each switch are valid there."""
    merged = (min(lo for lo, _ in ranges.values()), max(hi for _, hi in ranges.values()))
    if abs(merged[0] - gamma_0) > 1e-6 or abs(merged[1] - gamma_1) > 1e-6:
        raise ValueError(f"{path}: its merged range [gamma_0, gamma_1] = [{gamma_0:.6g}, {gamma_1:.6g}] is not "
                         f"the experts' [{merged[0]:.6g}, {merged[1]:.6g}]")
    for k, gamma in enumerate(gammas):
        for role in (roles[k], roles[k + 1]):
            lo, hi = ranges[role]
            if not lo - SLACK <= gamma <= hi + SLACK:
                raise ValueError(f"{path}: switch {k} at gamma {gamma:.6g} is outside the {role} expert's range "
                                 f"[{lo:.6g}, {hi:.6g}]; a switch must lie where both of its experts are valid")


# ----------------------------------------------------------------------------
# Auto-merge files (`expertmerge auto-merge`: the VLB-optimal merge of any number of experts).

def read_auto_merge(path, ranges: dict) -> dict:
    """The merge an auto-merge JSON chose ({experts: [high noise to low], switches: [hard switches, high to low]}),
    checked: one expert alone (no switches) or a merge that `merge_plan.check_merge` accepts on the experts'
    gamma `ranges` ({name: (gamma_min, gamma_max)})."""
    from .merge_plan import check_merge, parse_switch

    try:
        chosen = json.loads(Path(path).read_text())
        merge = chosen["merge"]
        names, switches = [str(name) for name in merge["experts"]], list(merge["switches"])
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not an auto-merge JSON file ({{\"merge\": {{\"experts\": [...], \"switches\": "
                         f"[...]}}}}): {error!r}") from None
    try:
        if set(names) - set(ranges):
            raise ValueError(f"names the expert(s) {sorted(set(names) - set(ranges))}, not among {sorted(ranges)}")
        if not (len(names) == 1 and not switches):  # else one expert serves the whole merged range alone
            parsed = [parse_switch(value) for value in switches]
            if any(switch.low != switch.high for switch in parsed):
                raise ValueError("an auto merge switches hard, it holds a blend")
            check_merge(names, parsed, ranges)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return {"experts": names, "switches": [float(value) for value in switches]}

